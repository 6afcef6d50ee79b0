package runner

import (
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
)

// With fail-fast, a violation of the invariant (a plain client's ballot
// without its total) stops the run with the region, the candidate and the
// snapshot in the error, instead of running on for its whole duration.
func TestFailFast(t *testing.T) {
	ctx := ctxT(t)
	pg, topo, r, out := onOneServer(t, 8, 2)
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	cand := pgtest.Query(t, pg.DSN("votr_1"), `INSERT INTO ballots (candidate)
		SELECT candidate FROM candidates ORDER BY candidate LIMIT 1 RETURNING candidate::text`)
	if len(cand) != 1 {
		t.Fatalf("inserting the lone ballot returned %v", cand)
	}

	res, err := r.Apply(ctx, topo, &RunOptions{Duration: 5 * time.Minute, FailFast: true, RateLimit: 20})
	if err == nil {
		t.Fatalf("a run with a violated invariant and fail-fast ended without an error:\n%s", out)
	}
	for _, want := range []string{"invariant violated in snapshot", cand[0], "ballots but total"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if res != nil && res.Run != nil && res.Run.OK {
		t.Error("the run reported OK")
	}
}
