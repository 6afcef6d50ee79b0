package plan

import (
	"strings"
	"testing"
)

func TestOwnerComment(t *testing.T) {
	for _, tc := range []struct {
		comment string
		want    Owner
		ok      bool
	}{
		{OwnerComment(3, "0a1b2c3d4e5f", "h:/srv/.votr"), Owner{3, "0a1b2c3d4e5f", "h:/srv/.votr"}, true},
		{OwnerComment(0, "0a1b2c3d4e5f", ""), Owner{0, "0a1b2c3d4e5f", ""}, true},
		{"votr region 7", Owner{Region: 7}, true}, // before deployment ids
		{"votr region x", Owner{}, false},
		{"precious data", Owner{}, false},
	} {
		got, ok := ParseOwner(tc.comment)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseOwner(%q) = %+v %v, want %+v %v", tc.comment, got, ok, tc.want, tc.ok)
		}
	}
}

// A converged deployment seen from another state dir: every database is
// foreign, noted without --take-over, taken over first with it.
func TestOwnership(t *testing.T) {
	topo := topology(t, 1)
	obs := converged(topo)
	obs.Deployment = "bbbbbbbbbbbb"
	obs.Servers[0].Owners = map[string]Owner{
		"votr_0": {Region: 0, Deployment: "aaaaaaaaaaaa", StateDir: "h:/a"},
		"votr_1": {Region: 1, Deployment: "aaaaaaaaaaaa", StateDir: "h:/a"},
	}
	p, err := Compute(topo, obs)
	if err != nil {
		t.Fatal(err)
	}
	Ownership(p, obs, false)
	if len(p.Foreign) != 2 || !p.Empty() || !strings.Contains(strings.Join(p.Notes, "\n"), "belongs to votr deployment aaaaaaaaaaaa (state dir h:/a)") {
		t.Errorf("without take-over: foreign %v, actions %v, notes %q", p.Foreign, lines(p), p.Notes)
	}
	if err := ForeignError("apply", p.Foreign, obs); !strings.Contains(err.Error(), "--take-over") {
		t.Errorf("refusal: %v", err)
	}
	p, _ = Compute(topo, obs)
	Ownership(p, obs, true)
	if got := strings.Join(lines(p), "\n"); got != "~ database votr_0 on local:default\n~ database votr_1 on local:default" {
		t.Errorf("with take-over:\n%s", got)
	}
	obs.Servers[0].Owners["votr_0"] = Owner{Region: 0, Deployment: "bbbbbbbbbbbb"}
	obs.Servers[0].Owners["votr_1"] = Owner{Region: 1}
	p, _ = Compute(topo, obs)
	Ownership(p, obs, false)
	if len(p.Foreign) != 0 {
		t.Errorf("own and pre-deployment databases taken as foreign: %v", p.Foreign)
	}
}
