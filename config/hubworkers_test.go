package config

import (
	"path/filepath"
	"strings"
	"testing"
)

// The hub runs workers by default only with exactly one spoke (2-DC);
// hubWorkers turns that off, and cannot turn it on with more spokes.
func TestHubWorkers(t *testing.T) {
	two := "hub: {}\nspokes: [{id: 1}, {id: 2}]\n"
	cases := []struct {
		name, doc string
		want      bool
		err       string
	}{
		{"one spoke: both write", minimalTopology, true, ""},
		{"one spoke, turned off", minimalTopology + "hubWorkers: false\n", false, ""},
		{"one spoke, said explicitly", minimalTopology + "hubWorkers: true\n", true, ""},
		{"two spokes: hub only receives", two, false, ""},
		{"two spokes, asked for", two + "hubWorkers: true\n", false, "needs exactly one spoke"},
		{"not a boolean", minimalTopology + "hubWorkers: yes please\n", false, "must be true or false"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(topoDir(t), "votr.yaml")
			writeFile(t, path, c.doc)
			top, err := Load(path, nil)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("Load = %v, want an error containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if top.HubWorkers != c.want || top.RunsWorkers(top.Hub.ID) != c.want || !top.RunsWorkers(1) {
				t.Errorf("HubWorkers = %v, RunsWorkers(hub) = %v, RunsWorkers(1) = %v; want hub %v, spoke true",
					top.HubWorkers, top.RunsWorkers(top.Hub.ID), top.RunsWorkers(1), c.want)
			}
		})
	}
}
