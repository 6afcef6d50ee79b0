package workload

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/schema"
)

// BenchmarkValidation measures one validation check (Validate: every
// candidate's ballots counted against its total, in one snapshot) on a
// region holding 1M ballots over the default 128 candidates, and prints
// "validation at 1M ballots: X ms per check". The check is exact, so it
// reads every ballot: its cost grows with the table, which is why
// workload.validateEvery defaults to the original's 15 s. Run it with
//
//	go test ./workload -run '^$' -bench Validation -benchtime 10x
func BenchmarkValidation(b *testing.B) {
	const ballots, candidates = 1_000_000, 128
	srv := pgtest.Start(b)
	dsn := pgtest.CreateDB(b, srv, "votr_bench_validation")
	pgtest.Exec(b, dsn, schema.Create(1)...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.SendBatch(ctx, schema.Seed(candidates)).Close(); err != nil {
		b.Fatalf("seed: %v", err)
	}
	// Rows as a sink writes them (clock and src given, no triggers), spread
	// evenly over the candidates; then the totals that make the region
	// consistent, and a VACUUM ANALYZE as autovacuum would have run.
	for _, q := range []string{
		`SET session_replication_role = replica`,
		fmt.Sprintf(`INSERT INTO public.ballots (candidate, ballot, whence, src)
			SELECT c.candidate, gen_random_uuid(), jsonb_build_object('1', g), 1
			FROM generate_series(1, %d) AS g
			JOIN (SELECT candidate, row_number() OVER (ORDER BY candidate) - 1 AS i FROM public.candidates) AS c ON c.i = g %% %d`,
			ballots, candidates),
		`UPDATE public.totals t SET total = b.n FROM (SELECT candidate, count(*) AS n FROM public.ballots GROUP BY candidate) AS b
			WHERE b.candidate = t.candidate`,
		`RESET session_replication_role`,
		`VACUUM ANALYZE public.ballots, public.totals, public.candidates`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			b.Fatalf("prepare 1M ballots: %v", err)
		}
	}
	var n int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM public.ballots`).Scan(&n); err != nil || n != ballots {
		b.Fatalf("the region holds %d ballots (%v), want %d", n, err, ballots)
	}
	start := time.Now()
	checks := 0
	for b.Loop() {
		vs, err := Validate(ctx, conn)
		if err != nil {
			b.Fatal(err)
		}
		if len(vs) != 0 {
			b.Fatalf("a consistent region reported violations: %v", vs)
		}
		checks++
	}
	per := time.Since(start) / time.Duration(checks)
	b.ReportMetric(float64(per.Microseconds())/1000, "ms/check")
	fmt.Printf("validation at 1M ballots: %.0f ms per check (%d checks)\n", float64(per.Microseconds())/1000, checks)
}
