package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/sink"
)

// lab owns the PostgreSQL servers of one bench invocation: they live under
// one scratch directory and are all destroyed when the bench ends, even if
// it is killed (see watchdog).
type lab struct {
	dir     string
	bin     string
	log     *slog.Logger
	servers []*localpg.Server
	stopDog func()
}

func newLab(log *slog.Logger) (*lab, error) {
	bin, err := localpg.FindBinDir(os.Getenv("VOTR_PG_BIN"))
	if err != nil {
		return nil, fmt.Errorf("the benchmark starts its own PostgreSQL servers: %w", err)
	}
	dir, err := os.MkdirTemp(os.TempDir(), "votr-bench-")
	if err != nil {
		return nil, fmt.Errorf("scratch directory: %w", err)
	}
	// When we run as root the servers run as user postgres, which must be
	// able to pass through this directory (MkdirTemp makes it 0700).
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("scratch directory: %w", err)
	}
	l := &lab{dir: dir, bin: bin, log: log}
	l.stopDog = watchdog(dir)
	return l, nil
}

// server creates and starts a fresh server named name.
func (l *lab) server(ctx context.Context, name string) (*localpg.Server, error) {
	s := localpg.New(localpg.Options{Dir: filepath.Join(l.dir, name), BinDir: l.bin, Logger: l.log})
	l.servers = append(l.servers, s)
	if err := s.Start(ctx); err != nil {
		return nil, fmt.Errorf("server %s: %w", name, err)
	}
	return s, nil
}

// drop destroys one server early (between parts), to free its memory.
func (l *lab) drop(ctx context.Context, s *localpg.Server) error {
	for i, x := range l.servers {
		if x == s {
			l.servers = append(l.servers[:i], l.servers[i+1:]...)
			break
		}
	}
	return s.Destroy(ctx)
}

// close destroys every server and the scratch directory.
func (l *lab) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	for _, s := range l.servers {
		if err := s.Destroy(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	l.servers = nil
	if len(errs) == 0 {
		errs = append(errs, os.RemoveAll(l.dir))
	}
	l.stopDog()
	return errors.Join(errs...)
}

// watchdogScript stops every server under $2 and removes $2 once process
// $1 (the bench) is gone without cleaning up: a panic or a SIGKILL would
// otherwise leave servers running.
const watchdogScript = `while kill -0 "$1" 2>/dev/null; do sleep 1; done
for f in "$2"/*/data/postmaster.pid; do
	pid=$(head -n 1 "$f" 2>/dev/null) && kill -QUIT "$pid" 2>/dev/null
done
sleep 2
rm -rf "$2"`

func watchdog(dir string) (stop func()) {
	cmd := exec.Command("sh", "-c", watchdogScript, "votr-bench-watchdog", strconv.Itoa(os.Getpid()), dir)
	// Its own process group: a Ctrl-C aimed at the bench must not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return func() {}
	}
	return func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// region is one votr region database.
type region struct {
	id  int
	db  string
	dsn string
}

// createRegion makes database db on s with the schema of region id and the
// seeded candidates.
func createRegion(ctx context.Context, s *localpg.Server, db string, id, candidates int) (region, error) {
	if err := execSQL(ctx, s.DSN("postgres"), "CREATE DATABASE "+schema.QuoteIdent(db)); err != nil {
		return region{}, err
	}
	r := region{id: id, db: db, dsn: s.DSN(db)}
	if err := execSQL(ctx, r.dsn, schema.Create(id)...); err != nil {
		return region{}, fmt.Errorf("schema of %s: %w", db, err)
	}
	conn, err := pgx.Connect(ctx, r.dsn)
	if err != nil {
		return region{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.SendBatch(ctx, schema.Seed(candidates)).Close(); err != nil {
		return region{}, fmt.Errorf("seed %s: %w", db, err)
	}
	return r, nil
}

// createSlot makes a pgoutput slot in the database of dsn.
func createSlot(ctx context.Context, dsn, slot string) error {
	return execSQL(ctx, dsn, "SELECT pg_create_logical_replication_slot("+schema.QuoteLiteral(slot)+", 'pgoutput')")
}

// addFeed gives feed its checkpoint row in the target at dstDSN, as apply
// does once the feed's slot exists: a sink refuses a feed without one.
func addFeed(ctx context.Context, dstDSN, feed string) error {
	conn, err := pgx.Connect(ctx, dstDSN)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return sink.CheckpointsIn(conn).Add(ctx, feed)
}

// execSQL runs each statement on its own connection to dsn.
func execSQL(ctx context.Context, dsn string, sql ...string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, q := range sql {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%.60q: %w", q, err)
		}
	}
	return nil
}

// queryRow runs a one-row query on its own connection.
func queryRow(ctx context.Context, dsn, sql string, args []any, dst ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, sql, args...).Scan(dst...); err != nil {
		return fmt.Errorf("%.60q: %w", sql, err)
	}
	return nil
}

// currentLSN is the server's WAL insert position: past every commit record
// so far, even of asynchronous commits not yet written (pg_current_wal_lsn
// is the write position, which may not be).
func currentLSN(ctx context.Context, dsn string) (pglogrepl.LSN, error) {
	var s string
	if err := queryRow(ctx, dsn, `SELECT pg_current_wal_insert_lsn()::text`, nil, &s); err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(s)
}

// digest is the content of a region: every ballot, total and candidate
// row, in key order, as md5 (the brief's "identical rows" check).
func digest(ctx context.Context, dsn string) (string, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	out := ""
	for _, q := range []string{
		`SELECT count(*) || ':' || COALESCE(md5(string_agg(b::text, ',' ORDER BY candidate, ballot)), '') FROM public.ballots b`,
		`SELECT count(*) || ':' || COALESCE(md5(string_agg(t::text, ',' ORDER BY candidate)), '') FROM public.totals t`,
		`SELECT count(*) || ':' || COALESCE(md5(string_agg(c::text, ',' ORDER BY candidate)), '') FROM public.candidates c`,
	} {
		var s string
		if err := conn.QueryRow(ctx, q).Scan(&s); err != nil {
			return "", fmt.Errorf("digest: %w", err)
		}
		out += s + " "
	}
	return out[:len(out)-1], nil
}

// sleepCtx sleeps d or until ctx ends; it reports whether it slept fully.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
