package schema

import (
	"context"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/pgtest"
)

// BenchmarkStamp measures the statements of one worker transaction in the
// original's shape (5 candidates: a totals upsert and 2 ballots each), run
// on the server in a loop so that only their own cost counts: with the
// votr.stamp trigger keeping the clocks, as a worker's writes, and without
// it (votr.sink = on), as a sink's. The difference is what the trigger
// costs a worker. Run it with
//
//	go test ./schema -run '^$' -bench Stamp -benchtime 2000x
func BenchmarkStamp(b *testing.B) {
	srv := pgtest.Start(b)
	dsn := pgtest.CreateDB(b, srv, "votr_bench_stamp")
	pgtest.Exec(b, dsn, Create(1)...)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.SendBatch(ctx, Seed(128)).Close(); err != nil {
		b.Fatalf("seed: %v", err)
	}
	for _, c := range []struct{ name, setting string }{
		{"stamp", "off"},
		{"no stamp (as a sink writes)", "on"},
	} {
		b.Run(c.name, func(b *testing.B) {
			if _, err := conn.Exec(ctx, `SELECT set_config('`+SinkSetting+`', $1, false)`, c.setting); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			_, err := conn.Exec(ctx, `DO $$ DECLARE c uuid; BEGIN
				FOR i IN 1..`+strconv.Itoa(b.N)+` LOOP
					FOR c IN SELECT candidate FROM public.candidates ORDER BY candidate LIMIT 5 LOOP
						INSERT INTO public.totals (candidate, total) VALUES (c, 2)
							ON CONFLICT (candidate) DO UPDATE SET total = totals.total + excluded.total;
						INSERT INTO public.ballots (candidate) SELECT c FROM generate_series(1, 2);
					END LOOP;
				END LOOP; END $$`)
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
