package config

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fuzzSecret = "fuzzSecret42"

// FuzzLoad feeds arbitrary documents to the loader: it must never panic,
// every error must carry the file and a position and fit on one line, a
// password from the environment must never show, and an accepted topology
// must be complete. Run: go test -fuzz=FuzzLoad ./config
func FuzzLoad(f *testing.F) {
	dir := f.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "scripts"), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "scripts", "votr.ts"), []byte(tinyScript), 0o644); err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(dir, "topology.yaml")
	vars := env(map[string]string{
		"PW":  fuzzSecret,
		"URL": "postgresql://votr:" + fuzzSecret + "@db.example/?sslmode=require",
		"N":   "3",
	})
	seeds := []string{
		"hub: {}\nspokes: [{id: 1}]\n",
		"hub:\n  connect: local\nspokes:\n  - id: 1\n    name: us-east\n  - id: 2\n    connect: local:west\ncandidates: 128\nworkers: 1\ndrainDelay: 1m\nscript: scripts/votr.ts\n",
		"hub: {connect: '${URL}'}\nspokes: [{id: 1, connect: 'postgresql://u:${PW}@h:5432/?sslmode=verify-full'}]\n",
		"hub: {}\nspokes: [{id: 1}]\nworkload: {maxCandidates: 5, interval: 10ms}\nsink: {slotWarnBytes: 1GiB, onScriptError: stop}\n",
		"hub: {}\nspokes: [{id: 1}, {id: 1}]\nworkers: ten\ndrainDelay: 60\n",
		"hub: {connect: 'postgresql://u:pw@h:99999/'}\nspokes: []\n",
		"hub: &h {connect: local}\nspokes: [*h]\n",
		"hub: [\n",
		"---\n---\n",
		"workers: ${N}\nhub: {}\nspokes: [{id: '${N}', name: $${x}}]\n",
		"",
		"- a\n- b\n",
		"hub: {}\nspokes:\n  - id: 1\n    database: ${PW}\n  - id: 2\n    database: ${PW}\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		top, err := Parse(path, data, vars)
		if err == nil {
			if top.Hub.ID != 0 || len(top.Spokes) == 0 || top.Program == nil || top.Hub.Database == "" {
				t.Fatalf("accepted an incomplete topology: %+v", top)
			}
			for _, r := range top.Spokes {
				if r.ID <= 0 || r.Database == "" || r.Connect == "" {
					t.Fatalf("accepted a bad spoke: %+v", r)
				}
			}
			return
		}
		es := AsErrors(err)
		if len(es) == 0 {
			t.Fatalf("error is not a config.Errors: %v", err)
		}
		for _, e := range es {
			if e.File != path || e.Line < 1 || e.Col < 1 || e.Msg == "" {
				t.Fatalf("error without a position: %#v", e)
			}
			if strings.Contains(e.Msg, "\n") {
				t.Fatalf("message spans lines: %q", e.Msg)
			}
		}
		if !bytes.Contains(data, []byte(fuzzSecret)) && strings.Contains(err.Error(), fuzzSecret) {
			t.Fatalf("error shows the password from the environment:\n%v", err)
		}
	})
}
