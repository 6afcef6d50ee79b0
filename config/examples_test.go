package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The shipped examples load with the real merge script, and say what their
// comments promise.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../examples/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("examples: %v %v", files, err)
	}
	vars := env(map[string]string{
		"VOTR_HUB_URL":         "postgresql://votr:pw1@hub.example.com:5432/?sslmode=verify-full",
		"VOTR_SPOKE1_URL":      "postgresql://votr:pw2@east.example.com:5432/?sslmode=verify-full",
		"VOTR_SPOKE2_PASSWORD": "pw3",
	})
	loaded := map[string]*Topology{}
	for _, f := range files {
		top, err := Load(f, vars)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if !strings.HasSuffix(top.Script, "/scripts/votr.ts") || top.Program == nil {
			t.Errorf("%s: script %s", f, top.Script)
		}
		loaded[filepath.Base(f)] = top
	}
	if l := loaded["local.yaml"]; l != nil {
		if len(l.Spokes) != 3 || l.Candidates != 128 || l.Workers != 1 || l.DrainDelay != time.Minute {
			t.Errorf("local.yaml is not the original demo: %+v", l)
		}
		for _, r := range l.Regions() {
			if r.ServerKey() != "local:default" {
				t.Errorf("local.yaml: region %s on %s", r.Label(), r.ServerKey())
			}
		}
	}
	if l := loaded["two-dc.yaml"]; l != nil && len(l.Spokes) != 1 {
		t.Errorf("two-dc.yaml has %d spokes", len(l.Spokes))
	}
	if l := loaded["multi-cluster.yaml"]; l != nil {
		servers := map[string]bool{}
		for _, r := range l.Regions() {
			servers[r.ServerKey()] = true
		}
		if len(servers) != len(l.Regions()) {
			t.Errorf("multi-cluster.yaml shares servers: %v", servers)
		}
	}
	if l := loaded["remote.yaml"]; l != nil {
		for _, r := range l.Regions() {
			if !strings.Contains(r.Connect, "sslmode=verify-full") || strings.Contains(r.Redacted(), "pw") {
				t.Errorf("remote.yaml: region %s connect %s", r.Label(), r.Redacted())
			}
		}
	}
	// Without its variables, remote.yaml names each missing one.
	_, err = Load("../examples/remote.yaml", env(nil))
	for _, v := range []string{"VOTR_HUB_URL", "VOTR_SPOKE1_URL", "VOTR_SPOKE2_PASSWORD"} {
		if err == nil || !strings.Contains(err.Error(), v+" is not set") {
			t.Errorf("remote.yaml without %s: %v", v, err)
		}
	}
}
