package plan

import (
	"testing"

	"github.com/votr-dev/votr/config"
)

// The plan says which regions run workers.
func TestWorkersText(t *testing.T) {
	spoke := func(id int) config.Region { return config.Region{ID: id} }
	cases := []struct {
		name string
		t    config.Topology
		want string
	}{
		{"2-DC", config.Topology{Spokes: []config.Region{spoke(1)}, Workers: 2, HubWorkers: true},
			"2-DC: both regions, hub 0 (hub) and spoke 1 (2 workers each), so both feeds carry new ballots and resolve conflicts (hubWorkers: false keeps the hub receiving only)"},
		{"one spoke, hub off", config.Topology{Spokes: []config.Region{spoke(1)}, Workers: 1},
			"spoke 1 (1 workers each); the hub only receives"},
		{"hub and spokes", config.Topology{Spokes: []config.Region{spoke(1), spoke(2)}, Workers: 3},
			"spokes 1, 2 (3 workers each); the hub only receives"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := workersText(&c.t); got != c.want {
				t.Errorf("workersText = %q, want %q", got, c.want)
			}
		})
	}
}
