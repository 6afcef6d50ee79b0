package runner

import (
	"strings"
	"testing"

	"github.com/votr-dev/votr/internal/pgtest"
)

// Lowering candidates below what the regions hold is refused by plan and
// apply, naming every region and what to do, and nothing is changed;
// raising it plans the missing candidates in every region.
func TestFewerCandidatesRefused(t *testing.T) {
	ctx := ctxT(t)
	pg, topo, r, out := onOneServer(t, 8, 1)
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	topo.Candidates = 4
	want := "candidates: 4 is fewer than the regions hold (region 0 (hub) holds 8, region 1 holds 8)"
	if _, err := r.Plan(ctx, topo); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "set candidates: 8") {
		t.Errorf("plan with fewer candidates = %v, want an error saying %q and what to do", err, want)
	}
	if _, err := r.Apply(ctx, topo, nil); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("apply with fewer candidates = %v, want an error saying %q", err, want)
	}
	for _, db := range []string{"votr_0", "votr_1"} {
		if n := pgtest.QueryInt(t, pg.DSN(db), `SELECT count(*) FROM candidates`); n != 8 {
			t.Errorf("%s holds %d candidates after the refused apply, want 8", db, n)
		}
	}

	topo.Candidates = 10
	p, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatalf("plan with more candidates: %v", err)
	}
	seeds := 0
	for _, a := range p.Actions {
		if a.Kind == "seed" && strings.Contains(a.Detail, "8 of 10 candidates present") {
			seeds++
		}
	}
	if seeds != 2 {
		t.Errorf("plan with more candidates: %d seed changes, want one per region:\n%s", seeds, strings.Join(planLines(p), "\n"))
	}
}
