// Package pgtest gives tests real PostgreSQL servers: each test gets its own
// managed server (package localpg) on a free loopback port, removed when the
// test ends.
//
// initdb is slow (~1.2 s), so the first server made on a machine for a given
// set of binaries is created once as a template under os.TempDir() and every
// server after that starts from a copy of its data directory (~0.3 s). The
// template is shared by all test binaries (a file lock serialises its
// creation) and is never started itself.
//
// Tests that need PostgreSQL fail, never skip, when the binaries are missing:
// the message says how to install them.
package pgtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/localpg"
)

// templateFormat changes whenever the way a template is made changes, so
// that templates made by older code are not reused.
const templateFormat = "2"

// Start returns a running server for this test, removed at cleanup.
func Start(t testing.TB) *localpg.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	bin, err := localpg.FindBinDir(os.Getenv("VOTR_PG_BIN"))
	if err != nil {
		t.Fatalf("pgtest: tests need a real PostgreSQL: %v (or run `make test`, which installs them)", err)
	}
	tmpl, err := ensureTemplate(ctx, bin)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}

	dir := t.TempDir()
	if os.Geteuid() == 0 {
		// Go makes the per-test parent of t.TempDir() 0700 as root; the
		// server runs as user postgres, which must pass through it.
		if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	if out, err := exec.CommandContext(ctx, "cp", "-a", filepath.Join(tmpl, "data"), filepath.Join(dir, "data")).CombinedOutput(); err != nil {
		t.Fatalf("pgtest: copy template cluster: %v: %s", err, out)
	}

	s := localpg.New(localpg.Options{Dir: dir, BinDir: bin, Logger: testLogger(t)})
	stopWatchdog := watchdog(t, dir)
	t.Cleanup(func() {
		defer stopWatchdog()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.Destroy(ctx); err != nil {
			t.Errorf("pgtest: destroy server: %v", err)
		}
	})
	if err := s.Start(ctx); err != nil {
		t.Fatalf("pgtest: start server: %v", err)
	}
	return s
}

// CreateDB creates database name on s and returns its DSN.
func CreateDB(t testing.TB, s *localpg.Server, name string) string {
	t.Helper()
	if name == "" {
		t.Fatalf("pgtest: CreateDB: empty database name")
	}
	Exec(t, s.DSN("postgres"), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return s.DSN(name)
}

// connect opens a connection to dsn for one helper call, failing the test
// if it cannot; the caller cancels and closes.
func connect(t testing.TB, dsn string) (*pgx.Conn, context.Context, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		cancel()
		t.Fatalf("pgtest: connect: %v", err)
	}
	return conn, ctx, cancel
}

// Exec runs each statement on dsn, failing the test on the first error.
func Exec(t testing.TB, dsn string, sql ...string) {
	t.Helper()
	conn, ctx, cancel := connect(t, dsn)
	defer cancel()
	defer conn.Close(context.Background())
	for _, q := range sql {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("pgtest: exec %q: %v", q, err)
		}
	}
}

// QueryInt runs a query returning one integer (anything castable to bigint).
func QueryInt(t testing.TB, dsn, sql string, args ...any) int64 {
	t.Helper()
	conn, ctx, cancel := connect(t, dsn)
	defer cancel()
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("pgtest: query %q: %v", sql, err)
	}
	return n
}

// Query runs one query and returns its rows, each as "a|b|c", sorted, so
// tests can compare result sets whatever order the server returns them in.
func Query(t testing.TB, dsn, sql string, args ...any) []string {
	t.Helper()
	conn, ctx, cancel := connect(t, dsn)
	defer cancel()
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("pgtest: query %q: %v", sql, err)
	}
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatalf("pgtest: query %q: %v", sql, err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = fmt.Sprint(v)
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("pgtest: query %q: %v", sql, err)
	}
	sort.Strings(out)
	return out
}

// watchdogScript stops the server in $2 and removes it once process $1 (the
// test binary) is gone without having cleaned up: a panic, a -timeout, or
// Ctrl-C would otherwise leave servers running. The per-test parent goes too
// if that leaves it empty.
const watchdogScript = `while kill -0 "$1" 2>/dev/null; do sleep 1; done
pid=$(head -n 1 "$2/data/postmaster.pid" 2>/dev/null) && kill -QUIT "$pid" 2>/dev/null && sleep 2
rm -rf "$2"
rmdir "$(dirname "$2")" 2>/dev/null`

// watchdog starts the watchdog for the server in dir and returns how to
// dismiss it once the test has cleaned up itself.
func watchdog(t testing.TB, dir string) (stop func()) {
	cmd := exec.Command("sh", "-c", watchdogScript, "pgtest-watchdog", strconv.Itoa(os.Getpid()), dir)
	// Its own process group: a Ctrl-C aimed at the tests must not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Logf("pgtest: no watchdog for %s (the server would outlive a crashed test): %v", dir, err)
		return func() {}
	}
	return func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// ensureTemplate returns the directory of a ready template cluster for the
// binaries in bin, making it if no test binary has yet.
func ensureTemplate(ctx context.Context, bin string) (string, error) {
	key, err := templateKey(bin)
	if err != nil {
		return "", err
	}
	final := filepath.Join(os.TempDir(), "votr-pgtest-template-"+key)
	ready := filepath.Join(final, "ready")
	if _, err := os.Stat(ready); err == nil {
		return final, nil
	}

	// Test binaries run in parallel; only one of them makes the template.
	lock, err := os.OpenFile(final+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", fmt.Errorf("template lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("template lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(ready); err == nil {
		return final, nil
	}

	_ = os.RemoveAll(final) // leftovers of an interrupted attempt
	tmp, err := os.MkdirTemp(os.TempDir(), "votr-pgtest-template-tmp-")
	if err != nil {
		return "", fmt.Errorf("template: %w", err)
	}
	defer os.RemoveAll(tmp)
	s := localpg.New(localpg.Options{Dir: tmp, BinDir: bin})
	if err := s.Init(ctx); err != nil {
		return "", fmt.Errorf("make template cluster: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "ready"), []byte("ok\n"), 0o644); err != nil {
		return "", fmt.Errorf("template: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("template: %w", err)
	}
	return final, nil
}

// templateKey identifies the binaries (path and build) and the user, so a
// PostgreSQL upgrade or a different user gets its own template.
func templateKey(bin string) (string, error) {
	fi, err := os.Stat(filepath.Join(bin, "postgres"))
	if err != nil {
		return "", fmt.Errorf("template: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%d\n%d\n%d\n", templateFormat, bin, fi.Size(), fi.ModTime().UnixNano(), os.Geteuid())
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// testLogger sends the server's lifecycle events to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = testWriter{}

// CommandUnder reports whether a process named comm (as /proc/PID/comm
// shows it: initdb, postgres) works under dir, so that a test can act at a
// chosen moment of a server's creation or start.
func CommandUnder(dir, comm string) bool {
	for _, pid := range localpg.New(localpg.Options{Dir: dir}).Processes() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && strings.TrimSpace(string(b)) == comm {
			return true
		}
	}
	return false
}
