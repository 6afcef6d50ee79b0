package runner

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
)

// A run with a short reporting period logs, per working region, the
// ballots inserted in each period (the original's "inserted N ballots"),
// and a last line for the part period before the workers stopped: per
// region the lines add up to exactly the ballots its workers inserted, which
// the hub holds with that src. The hub runs no workers and gets no lines.
func TestProgressLines(t *testing.T) {
	ctx := ctxT(t)
	pg, topo, r, out := onOneServer(t, 16, 2)
	topo.Workload.Interval = 0
	res, err := r.Apply(ctx, topo, &RunOptions{Duration: 3 * time.Second, RateLimit: 20, ReportEvery: 400 * time.Millisecond})
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if !res.Run.OK {
		t.Fatalf("run not OK: %v\n%s", res.Run.Report.Problems(), out)
	}
	var rep strings.Builder
	_ = res.Run.Report.WriteText(&rep)
	t.Logf("the report:\n%s", rep.String())
	// After convergence every feed's lag (transactions not applied yet) is
	// 0, though the slots on this shared server retain WAL.
	for _, f := range res.Run.Report.Feeds {
		if f.UnappliedTxns != 0 {
			t.Errorf("feed %s: lag %d txns after convergence (capped %v, slot active %v)", f.Name, f.UnappliedTxns, f.UnappliedCapped, f.SlotActive)
		}
	}
	if !strings.Contains(out.String(), "no theoretical max") {
		t.Errorf("no start line about the theoretical maximum:\n%s", out)
	}
	line := regexp.MustCompile(`msg="inserted ballots" region=(\S+) ballots=(\d+) interval=400ms final=(true|false)`)
	sums, periods, finals := map[string]int64{}, map[string]int{}, map[string]int{}
	for _, m := range line.FindAllStringSubmatch(out.String(), -1) {
		n, _ := strconv.ParseInt(m[2], 10, 64)
		sums[m[1]] += n
		if m[3] == "true" {
			finals[m[1]]++
		} else {
			periods[m[1]]++
		}
	}
	if _, ok := sums["0"]; ok || len(sums) != 2 {
		t.Fatalf("progress lines for regions %v, want spokes 1 and 2 only:\n%s", sums, out)
	}
	for id, label := range map[int]string{1: "1", 2: "2"} {
		inserted := res.Run.Committed[id]
		atHub := pgtest.QueryInt(t, pg.DSN("votr_0"), `SELECT count(*) FROM ballots WHERE src = `+label)
		if sums[label] != inserted || int64(atHub) != inserted || inserted == 0 {
			t.Errorf("region %s: progress lines add up to %d, its workers inserted %d, the hub holds %d from it",
				label, sums[label], inserted, atHub)
		}
		if periods[label] < 1 || finals[label] != 1 {
			t.Errorf("region %s: %d periodic lines and %d final ones, want at least 1 and exactly 1", label, periods[label], finals[label])
		}
	}

	// With the original's pace, the start line gives its ceiling: 1 worker ×
	// 10 ballots × 400ms / 100ms.
	topo.Workload.Interval = 100 * time.Millisecond
	if _, err := r.Apply(ctx, topo, &RunOptions{Duration: time.Second, ReportEvery: 400 * time.Millisecond}); err != nil {
		t.Fatalf("second apply: %v\n%s", err, out)
	}
	if !strings.Contains(out.String(), "max_ballots_per_interval=40 ") {
		t.Errorf("no theoretical max of 40 per 400ms:\n%s", out)
	}
}
