package runner

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
)

// BenchmarkSpokeJoin measures adding a spoke to a hub that holds
// VOTR_BENCH_BALLOTS ballots (default 200000): the backfill's copy rate
// and the time from the apply that sees the edited topology to every
// region converged. It prints its figures; run it with
//
//	go test ./runner -run '^$' -bench SpokeJoin -benchtime 1x
func BenchmarkSpokeJoin(b *testing.B) {
	ballots := 200000
	if v := os.Getenv("VOTR_BENCH_BALLOTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 128 {
			b.Fatalf("VOTR_BENCH_BALLOTS=%q: want a number of ballots, at least 128", v)
		}
		ballots = n
	}
	ctx := ctxT(b)
	pg := pgtest.Start(b)
	url := baseURL(pg)
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		state := filepath.Join(dir, "state")
		out := &testlog.Buffer{}
		r := newRunner(b, state, out)
		one := topology(b, dir, 128, region{connect: url}, region{id: 1, connect: url})
		if _, err := r.Apply(ctx, one, nil); err != nil {
			b.Fatal(err)
		}
		// The hub's ballots, as if spoke 1's sink had brought them.
		per := ballots / 128
		pgtest.Exec(b, pg.DSN("votr_0"),
			fmt.Sprintf(`INSERT INTO ballots (candidate) SELECT candidate FROM candidates, generate_series(1, %d)`, per),
			fmt.Sprintf(`UPDATE totals SET total = total + %d`, per), `VACUUM ANALYZE`)
		// Feed 0:1 streams them to spoke 1 (and 1:0 reads that back as an
		// echo): settle that first, it is not what is measured.
		one.DrainDelay = 5 * time.Minute
		if res, err := r.Apply(ctx, one, &RunOptions{Duration: time.Millisecond}); err != nil || !res.Run.OK {
			b.Fatalf("settling the hub's ballots: %v\n%s", err, out)
		}
		rows := pgtest.QueryInt(b, pg.DSN("votr_0"), `SELECT (SELECT count(*) FROM ballots) + (SELECT count(*) FROM totals) + (SELECT count(*) FROM candidates)`)

		two := topology(b, dir, 128, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url})
		b.ResetTimer()
		start := time.Now()
		if _, err := r.Apply(ctx, two, nil); err != nil {
			b.Fatalf("apply: %v\n%s", err, out)
		}
		converged := time.Since(start)
		b.StopTimer()
		m := regexp.MustCompile(`\+ backfill votr_2 on \S+: created \(([^)]+)\)`).FindStringSubmatch(out.String())
		if m == nil {
			b.Fatalf("no backfill in the output:\n%s", out)
		}
		took, err := time.ParseDuration(m[1])
		if err != nil {
			b.Fatal(err)
		}
		if got := pgtest.QueryInt(b, pg.DSN("votr_2"), `SELECT count(*) FROM ballots`); got != int64(per*128) {
			b.Fatalf("spoke 2 holds %d ballots after the backfill, the hub %d", got, per*128)
		}
		fmt.Printf("backfill: %d rows (%d ballots) in %s: %.0f rows/s; apply from the edited topology to converged resources: %s\n",
			rows, per*128, took, float64(rows)/took.Seconds(), converged.Round(time.Millisecond))
		b.ReportMetric(float64(rows)/took.Seconds(), "rows/s")

		// Online: spoke 3 joins a running apply (spokes 1 and 2 casting
		// ballots); from the reload to its feeds running, and to the report
		// of every region converged once the run is stopped right after.
		interrupt, reload := make(chan struct{}), make(chan struct{})
		online := newRunner(b, state, out, func(o *Options) {
			o.Interrupt, o.Reload = interrupt, reload
			o.Load = func(path string) (*config.Topology, error) {
				t, err := config.Load(path, os.LookupEnv)
				if err == nil {
					t.DrainDelay = 5 * time.Minute
				}
				return t, err
			}
		})
		two.DrainDelay = 5 * time.Minute
		done := make(chan error, 1)
		var res *ApplyResult
		go func() {
			var err error
			res, err = online.Apply(ctx, two, &RunOptions{RateLimit: 20})
			done <- err
		}()
		for !strings.Contains(out.String(), "casting ballots") {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Second)
		three := topology(b, dir, 128, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url}, region{id: 3, connect: url})
		start = time.Now()
		reload <- struct{}{}
		for !strings.Contains(out.String(), "Reload complete") {
			time.Sleep(5 * time.Millisecond)
		}
		joined := time.Since(start)
		close(interrupt)
		if err := <-done; err != nil || !res.Run.OK {
			b.Fatalf("online join: %v\n%s", err, out)
		}
		fmt.Printf("online join of spoke 3 under load: feeds running %s after the reload, every region converged %s after it\n",
			joined.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		if _, err := r.Destroy(ctx, three); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
