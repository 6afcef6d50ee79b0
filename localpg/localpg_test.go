package localpg_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/localpg"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// reachableTempDir is t.TempDir() made traversable for the postgres user
// when the test runs as root (Go creates it and its parent 0700).
func reachableTempDir(t *testing.T) string {
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		for _, d := range []string{filepath.Dir(dir), dir} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func binDir(t *testing.T) string {
	bin, err := localpg.FindBinDir(os.Getenv("VOTR_PG_BIN"))
	if err != nil {
		t.Fatalf("tests need a real PostgreSQL: %v", err)
	}
	return bin
}

func postmasterPID(t *testing.T, s *localpg.Server) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir(), "data", "postmaster.pid"))
	if err != nil {
		t.Fatalf("read postmaster.pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	return pid
}

func setting(t *testing.T, ctx context.Context, dsn, name string) string {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
		t.Fatalf("setting %s: %v", name, err)
	}
	return v
}

// TestLifecycle runs the whole life of a server made from scratch (initdb),
// in a directory whose path is too long for a Unix socket.
func TestLifecycle(t *testing.T) {
	ctx := testCtx(t)
	dir := filepath.Join(reachableTempDir(t), "a-directory-name-long-enough-to-push-the-socket-path-over-the-unix-limit-"+strings.Repeat("x", 30))
	s := localpg.New(localpg.Options{Dir: dir, BinDir: binDir(t)})
	t.Cleanup(func() { _ = s.Destroy(context.Background()) })

	if s.Exists() || s.Running(ctx) {
		t.Fatal("server exists before Start")
	}
	if err := s.Init(ctx); err != nil {
		t.Fatal(err)
	}
	port := s.Port()
	if !s.Exists() || s.Running(ctx) || port == 0 {
		t.Fatalf("after Init: exists %v, running %v, port %d; want a stopped cluster with a port", s.Exists(), s.Running(ctx), port)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.Exists() || !s.Running(ctx) {
		t.Fatal("server not running after Start")
	}
	if s.Port() != port {
		t.Fatalf("Start moved the server from port %d (chosen at Init) to %d", port, s.Port())
	}
	if b, err := os.ReadFile(filepath.Join(dir, "port")); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(port) {
		t.Fatalf("port file = %q, %v; want %d", b, err, port)
	}
	secret, err := os.ReadFile(filepath.Join(dir, "data", "votr.secret"))
	if err != nil || len(strings.TrimSpace(string(secret))) < 32 {
		t.Fatalf("secret file %q: %v; want a generated password", secret, err)
	}
	if want := "postgres://postgres:" + strings.TrimSpace(string(secret)) + "@127.0.0.1:" + strconv.Itoa(port) + "/votr_1?sslmode=disable"; s.DSN("votr_1") != want {
		t.Fatalf("DSN = %q, want %q", s.DSN("votr_1"), want)
	}
	for name, want := range map[string]string{
		"wal_level":               "logical",
		"max_replication_slots":   "64",
		"max_wal_senders":         "64",
		"max_slot_wal_keep_size":  "4GB",
		"listen_addresses":        "127.0.0.1",
		"fsync":                   "on",
		"server_encoding":         "UTF8",
		"unix_socket_directories": "", // path too long: TCP only
	} {
		if got := setting(t, ctx, s.DSN("postgres"), name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "server.log")); err != nil || len(b) == 0 {
		t.Errorf("server.log empty or missing: %v", err)
	}

	pid := postmasterPID(t, s)
	if err := s.Start(ctx); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	if got := postmasterPID(t, s); got != pid {
		t.Fatalf("second Start replaced the server: pid %d, was %d", got, pid)
	}
	// A second handle (another votr process) reuses it too.
	if err := localpg.New(localpg.Options{Dir: dir}).Start(ctx); err != nil || postmasterPID(t, s) != pid {
		t.Fatalf("Start from a second handle: %v (pid %d, was %d)", err, postmasterPID(t, s), pid)
	}

	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Running(ctx) {
		t.Fatal("running after Stop")
	}
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop of a stopped server: %v", err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start after Stop: %v", err)
	}
	if s.Port() != port {
		t.Fatalf("port changed across restart: %d, was %d", s.Port(), port)
	}

	if err := s.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("Dir still there after Destroy: %v", err)
	}
	if s.Exists() || s.Running(ctx) {
		t.Fatal("server exists after Destroy")
	}
	if err := s.Destroy(ctx); err != nil {
		t.Fatalf("Destroy twice: %v", err)
	}
}

// TestStalePid kills the postmaster without a shutdown, as a crash or an
// OOM kill would; Start must bring it back with its committed data.
func TestStalePid(t *testing.T) {
	ctx := testCtx(t)
	s := pgtest.Start(t)
	dsn := pgtest.CreateDB(t, s, "stale")
	pgtest.Exec(t, dsn, "CREATE TABLE kept (n int)", "INSERT INTO kept VALUES (7)")

	pid := postmasterPID(t, s)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// No waiting: the dead postmaster may still be an unreaped zombie and
	// its children may still hold its shared memory; Start copes with both.
	if s.Running(ctx) {
		t.Fatal("Running() with a dead postmaster")
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "data", "postmaster.pid")); err != nil {
		t.Fatalf("expected a stale postmaster.pid: %v", err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start over a stale pid: %v", err)
	}
	if postmasterPID(t, s) == pid {
		t.Fatal("pid unchanged")
	}
	if got := pgtest.QueryInt(t, dsn, "SELECT n FROM kept"); got != 7 {
		t.Fatalf("committed row = %d, want 7", got)
	}
}

// TestRecycledPid: postmaster.pid names a live process that is not this
// server's postmaster (its pid was reused after a crash or reboot).
func TestRecycledPid(t *testing.T) {
	tests := []struct {
		name  string
		owner func(t *testing.T) []byte // the postmaster.pid to plant
	}{
		{"unrelated program", func(t *testing.T) []byte {
			return []byte(strconv.Itoa(os.Getpid()) + "\n")
		}},
		{"another server's postmaster", func(t *testing.T) []byte {
			other := pgtest.Start(t)
			b, err := os.ReadFile(filepath.Join(other.Dir(), "data", "postmaster.pid"))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			s := pgtest.Start(t)
			if err := s.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(s.Dir(), "data", "postmaster.pid"), tc.owner(t), 0o600); err != nil {
				t.Fatal(err)
			}
			if s.Running(ctx) {
				t.Fatal("Running() trusts a pid that is not this server's")
			}
			if err := s.Start(ctx); err != nil {
				t.Fatalf("Start: %v", err)
			}
			if !s.Running(ctx) {
				t.Fatal("not running")
			}
			pgtest.CreateDB(t, s, "after")
		})
	}
}

func TestRestart(t *testing.T) {
	ctx := testCtx(t)
	s := pgtest.Start(t)
	dsn := pgtest.CreateDB(t, s, "restart")
	pgtest.Exec(t, dsn, "CREATE TABLE kept (n int)")
	// A short test path keeps the Unix socket.
	if _, err := os.Stat(filepath.Join(s.Dir(), "socket", ".s.PGSQL."+strconv.Itoa(s.Port()))); err != nil {
		t.Errorf("unix socket: %v", err)
	}
	for i, mode := range []string{"fast", "immediate", "fast"} {
		pgtest.Exec(t, dsn, "INSERT INTO kept VALUES ("+strconv.Itoa(i+1)+")")
		pid := postmasterPID(t, s)
		if err := s.Restart(ctx, mode); err != nil {
			t.Fatalf("Restart(%s): %v", mode, err)
		}
		if !s.Running(ctx) || postmasterPID(t, s) == pid {
			t.Fatalf("Restart(%s) did not restart", mode)
		}
		if got := pgtest.QueryInt(t, dsn, "SELECT count(*) FROM kept"); got != int64(i+1) {
			t.Fatalf("after Restart(%s): %d rows, want %d", mode, got, i+1)
		}
	}
	if err := s.Restart(ctx, "smart-ish"); err == nil || !strings.Contains(err.Error(), `"fast" or "immediate"`) {
		t.Fatalf("bad mode: err = %v", err)
	}
	if !s.Running(ctx) {
		t.Fatal("a rejected mode stopped the server")
	}
}

// TestPortTaken: a stored port taken by another program moves the server to
// a new port; an explicitly requested port that is taken is an error.
func TestPortTaken(t *testing.T) {
	ctx := testCtx(t)
	s := pgtest.Start(t)
	old := s.Port()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(old))
	if err != nil {
		t.Fatalf("occupy port %d: %v", old, err)
	}
	defer l.Close()

	explicit := localpg.New(localpg.Options{Dir: s.Dir(), Port: old})
	if err := explicit.Start(ctx); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("explicit taken port: err = %v", err)
	}

	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start with stored port taken: %v", err)
	}
	if s.Port() == old {
		t.Fatalf("still on taken port %d", old)
	}
	b, _ := os.ReadFile(filepath.Join(s.Dir(), "port"))
	if strings.TrimSpace(string(b)) != strconv.Itoa(s.Port()) {
		t.Fatalf("port file %q, server on %d", b, s.Port())
	}
	pgtest.CreateDB(t, s, "moved")
}

// TestStartFailureShowsLog: when the server cannot start, the error carries
// the server log that explains why.
func TestStartFailureShowsLog(t *testing.T) {
	ctx := testCtx(t)
	s := pgtest.Start(t)
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	auto := filepath.Join(s.Dir(), "data", "postgresql.auto.conf")
	f, err := os.OpenFile(auto, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("shared_buffers = 'lots'\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	err = s.Start(ctx)
	if err == nil {
		t.Fatal("Start succeeded with a broken config")
	}
	for _, want := range []string{"server.log", "shared_buffers"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestFindBinDir(t *testing.T) {
	tests := []struct {
		name     string
		explicit string
		wantErr  string
	}{
		{"found on this machine", "", ""},
		{"bogus explicit dir", "/nonexistent/pg/bin", "sudo apt-get install -y postgresql"},
		{"dir without the programs", t.TempDir(), "VOTR_PG_BIN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := localpg.FindBinDir(tc.explicit)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("tests need a real PostgreSQL: %v", err)
				}
				for _, p := range []string{"initdb", "pg_ctl", "postgres"} {
					if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
						t.Errorf("%s: %v", p, err)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}
