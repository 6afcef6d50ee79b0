package sink

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/schema"
)

// BenchmarkCatchUp measures how fast a backlog of VOTR transactions is
// applied: by the sink (votr.ts merges on, default options), by the
// sink's reader alone discarding everything (the decode ceiling), and by
// PostgreSQL's native logical replication on the same backlog. Run with
//
//	go test -run '^$' -bench CatchUp -benchtime 1x ./sink/
//
// VOTR_BENCH_TXNS sets the backlog (default 40000 transactions, about
// 260,000 row changes); VOTR_BENCH_BATCH the sink's BatchTxns (default:
// the sink's default), VOTR_BENCH_PROFILE a directory for CPU and
// allocation profiles.
func BenchmarkCatchUp(b *testing.B) {
	txns := 40000
	if v := os.Getenv("VOTR_BENCH_TXNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatalf("VOTR_BENCH_TXNS: %v", err)
		}
		txns = n
	}
	srcSrv, dstSrv := pgtest.Start(b), pgtest.Start(b)
	src := benchRegion(b, srcSrv, 1, "votr_1")
	dst := benchRegion(b, dstSrv, 0, "votr_0")
	native := benchRegion(b, dstSrv, 0, "votr_native")
	createSlot(b, src, dst.id)
	createSlot(b, src, 9) // for the discarding reader
	pgtest.Exec(b, src.dsn, `SELECT pg_create_logical_replication_slot('native', 'pgoutput')`)
	pgtest.Exec(b, native.dsn, fmt.Sprintf(`CREATE SUBSCRIPTION native CONNECTION %s
		PUBLICATION votr WITH (create_slot = false, slot_name = 'native', copy_data = false, enabled = false)`, schema.QuoteLiteral(srcSrv.ConnString(src.db))))

	t0 := time.Now()
	rows := backlog(b, src.dsn, txns)
	// Settle the source (autovacuum would otherwise run during the first
	// measurement).
	pgtest.Exec(b, src.dsn, `VACUUM ANALYZE`, `CHECKPOINT`)
	end := sourceLSN(b, src.dsn)
	b.Logf("backlog: %d transactions, %d row changes, written in %s", txns, rows, time.Since(t0).Round(time.Millisecond))
	b.ResetTimer()

	measure := func(name string, cfg Config) {
		var ru0, ru1 syscall.Rusage
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		if dir := os.Getenv("VOTR_BENCH_PROFILE"); dir != "" {
			f, err := os.Create(filepath.Join(dir, name+".pprof"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				b.Fatal(err)
			}
			defer pprof.StopCPUProfile()
		}
		t0 := time.Now()
		r := start(b, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if err := r.s.WaitCaughtUp(ctx, end); err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		el := time.Since(t0)
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		runtime.ReadMemStats(&ms1)
		servers := serverCPU(b, src.dsn, `SELECT pid FROM pg_stat_replication WHERE application_name = 'votr-sink'`)
		if !cfg.Discard {
			servers += ", apply " + serverCPU(b, dst.dsn, `SELECT pid FROM pg_stat_activity WHERE application_name = 'votr-sink' AND pid <> pg_backend_pid()`)
		}
		if err := r.stop(b); err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		if dir := os.Getenv("VOTR_BENCH_PROFILE"); dir != "" {
			f, err := os.Create(filepath.Join(dir, name+".allocs"))
			if err != nil {
				b.Fatal(err)
			}
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
		cpu := time.Duration(syscall.TimevalToNsec(ru1.Utime) + syscall.TimevalToNsec(ru1.Stime) -
			syscall.TimevalToNsec(ru0.Utime) - syscall.TimevalToNsec(ru0.Stime))
		st := r.s.Status()
		b.Logf("%-8s %7.0f rows/s %6.0f txn/s  %s  sink CPU %.2fs per 100k rows, %.1f allocs and %.0f B per row  (%d rows, %d txns applied in %d target txns); server CPU s: walsender %s",
			name, float64(rows)/el.Seconds(), float64(txns)/el.Seconds(), el.Round(time.Millisecond),
			cpu.Seconds()*100000/float64(rows), float64(ms1.Mallocs-ms0.Mallocs)/float64(rows),
			float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(rows), st.Rows, st.Txns, r.s.groups.Load(), servers)
		b.ReportMetric(float64(rows)/el.Seconds(), name+"-rows/s")
	}

	dcfg := feedConfig(b, src, region{id: 9, db: "none"}, nil, DefaultOptions())
	dcfg.Discard = true
	dcfg.TargetDSN = ""
	measure("discard", dcfg)

	opts := DefaultOptions()
	if v, _ := strconv.Atoi(os.Getenv("VOTR_BENCH_BATCH")); v > 0 {
		opts = options(v, 10*v, 3)
	}
	cfg := feedConfig(b, src, dst, votrScript(b), opts)
	cfg.Logger = nil
	measure("sink", cfg)

	// Native: enable the subscription and wait for the last source
	// transaction's row to show on the target.
	t0 = time.Now()
	pgtest.Exec(b, native.dsn, `ALTER SUBSCRIPTION native ENABLE`)
	conn := connect(b, native.dsn)
	defer conn.Close(context.Background())
	want := queryInt(b, src.dsn, `SELECT count(*) FROM ballots`)
	for {
		var n int64
		if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM ballots`).Scan(&n); err != nil {
			b.Fatal(err)
		}
		if n == want {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	el := time.Since(t0)
	servers := serverCPU(b, src.dsn, `SELECT pid FROM pg_stat_replication WHERE application_name = 'native'`) +
		", apply " + serverCPU(b, native.dsn, `SELECT pid FROM pg_stat_activity WHERE backend_type = 'logical replication worker'`)
	b.Logf("%-8s %7.0f rows/s %6.0f txn/s  %s; server CPU s: walsender %s", "native", float64(rows)/el.Seconds(), float64(txns)/el.Seconds(), el.Round(time.Millisecond), servers)
	b.ReportMetric(float64(rows)/el.Seconds(), "native-rows/s")
	pgtest.Exec(b, native.dsn, `ALTER SUBSCRIPTION native DISABLE`, `ALTER SUBSCRIPTION native SET (slot_name = NONE)`, `DROP SUBSCRIPTION native`)

	if got, want := convergedDigest(b, dst.dsn), convergedDigest(b, src.dsn); got != want {
		b.Errorf("sink target differs from source:\n got %s\nwant %s", got, want)
	}
	if got, want := convergedDigest(b, native.dsn), convergedDigest(b, src.dsn); got != want {
		b.Errorf("native target differs from source:\n got %s\nwant %s", got, want)
	}
}

func benchRegion(b *testing.B, srv interface {
	DSN(string) string
}, id int, db string) region {
	b.Helper()
	s := srv.(interface{ DSN(string) string })
	pgtest.Exec(b, s.DSN("postgres"), "CREATE DATABASE "+db)
	dsn := s.DSN(db)
	pgtest.Exec(b, dsn, schema.Create(id)...)
	conn := connect(b, dsn)
	defer conn.Close(context.Background())
	if err := conn.SendBatch(context.Background(), schema.Seed(128)).Close(); err != nil {
		b.Fatal(err)
	}
	return region{id: id, db: db, dsn: dsn}
}

// backlog writes n VOTR transactions (one totals update and 1..10 ballots
// each) from 8 connections; it returns the row changes written.
func backlog(b *testing.B, dsn string, n int) int64 {
	b.Helper()
	cands := schema.Candidates(128)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var rows int64
	const workers = 8
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			ctx := context.Background()
			cfg, err := pgx.ParseConfig(dsn)
			if err != nil {
				b.Error(err)
				return
			}
			cfg.RuntimeParams["synchronous_commit"] = "off"
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close(ctx)
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			var mine int64
			for i := w; i < n; i += workers {
				c := cands[rng.IntN(len(cands))].ID
				k := 1 + rng.IntN(10)
				batch := &pgx.Batch{}
				batch.Queue(`BEGIN`)
				batch.Queue(`UPDATE totals SET total = total + $2 WHERE candidate = $1`, c, k)
				batch.Queue(`INSERT INTO ballots (candidate) SELECT $1 FROM generate_series(1, $2::int)`, c, k)
				batch.Queue(`COMMIT`)
				if err := conn.SendBatch(ctx, batch).Close(); err != nil {
					b.Error(err)
					return
				}
				mine += int64(1 + k)
			}
			mu.Lock()
			rows += mine
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	return rows
}

// serverCPU sums the CPU seconds used so far by the server processes the
// query lists (the servers run on this machine).
func serverCPU(b *testing.B, dsn, query string) string {
	conn := connect(b, dsn)
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), query)
	if err != nil {
		b.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		b.Fatal(err)
	}
	var ticks int64
	for _, pid := range pids {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		stt, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += ut + stt
	}
	return fmt.Sprintf("%.2f", float64(ticks)/100)
}
