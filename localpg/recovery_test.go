package localpg_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
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

// TestMain doubles as a votr stand-in: with LOCALPG_TEST_START set, the test
// binary only starts the server in that directory, so that tests can kill
// it (SIGKILL, like a user or the OOM killer) at chosen moments.
func TestMain(m *testing.M) {
	if dir := os.Getenv("LOCALPG_TEST_START"); dir != "" {
		s := localpg.New(localpg.Options{Dir: dir, BinDir: os.Getenv("LOCALPG_TEST_BIN")})
		if err := s.Start(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// secretOf is the server's password, read from its secret file.
func secretOf(t *testing.T, s *localpg.Server) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir(), "data", "votr.secret"))
	if err != nil {
		t.Fatalf("secret file: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// storedPort is the port in the server's port file.
func storedPort(t *testing.T, s *localpg.Server) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir(), "port"))
	if err != nil {
		t.Fatalf("port file: %v", err)
	}
	p, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("port file: %v", err)
	}
	return p
}

// pidFilePort is the port the running postmaster recorded.
func pidFilePort(t *testing.T, s *localpg.Server) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir(), "data", "postmaster.pid"))
	if err != nil {
		t.Fatalf("read postmaster.pid: %v", err)
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		t.Fatalf("postmaster.pid too short: %q", b)
	}
	p, _ := strconv.Atoi(strings.TrimSpace(lines[3]))
	return p
}

// wantNothingLeft asserts that Dir is gone and no PostgreSQL process works
// under it (a deleted data directory included).
func wantNothingLeft(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", dir, err)
	}
	if pids := localpg.New(localpg.Options{Dir: dir}).Processes(); len(pids) > 0 {
		t.Errorf("PostgreSQL processes still running under %s: %v", dir, pids)
	}
}

// wantVotrServer asserts the server runs with votr's settings, on the port
// it stored, and that DSN, Port and postmaster.pid agree.
func wantVotrServer(t *testing.T, ctx context.Context, s *localpg.Server) {
	t.Helper()
	if !s.Running(ctx) {
		t.Fatal("server not running")
	}
	if got, stored, pid := s.Port(), storedPort(t, s), pidFilePort(t, s); got != stored || got != pid {
		t.Errorf("Port() %d, port file %d, postmaster.pid %d: want all equal", got, stored, pid)
	}
	for name, want := range map[string]string{"wal_level": "logical", "listen_addresses": "127.0.0.1", "max_replication_slots": "64"} {
		if got := setting(t, ctx, s.DSN("postgres"), name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	for _, leftover := range []string{"data.new", ".initdb-password"} {
		if _, err := os.Stat(filepath.Join(s.Dir(), leftover)); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", leftover, err)
		}
	}
}

// serverCredential runs a child as the server's OS user when we are root.
func serverCredential(t *testing.T) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setsid: true}
	if os.Geteuid() != 0 {
		return attr
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	attr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return attr
}

// spawnForeign starts the server's cluster the way something other than
// this votr would: by hand, on port, with extra settings, and waits until it
// accepts connections. It returns the postmaster's pid.
func spawnForeign(t *testing.T, s *localpg.Server, port int, extra ...string) int {
	t.Helper()
	data := filepath.Join(s.Dir(), "data")
	args := append([]string{"-D", data, "-c", "port=" + strconv.Itoa(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="}, extra...)
	cmd := exec.Command(filepath.Join(binDir(t), "postgres"), args...)
	cmd.Dir = data
	cmd.SysProcAttr = serverCredential(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "foreign.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	dsn := fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", secretOf(t, s), port)
	waitFor(t, "the hand-started server accepts connections", func() bool {
		conn, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			return false
		}
		conn.Close(context.Background())
		return true
	})
	return cmd.Process.Pid
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// stopped is a test server (a copy of the template cluster) that is not
// running.
func stopped(t *testing.T) *localpg.Server {
	t.Helper()
	s := pgtest.Start(t)
	if err := s.Stop(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestKilledDuringCreationAndStart kills the process running Start (alone,
// or with its whole process group) at several points of creating and
// starting a server, then checks that the next Start gives a working server
// with votr's settings, and that Destroy leaves nothing running.
func TestKilledDuringCreationAndStart(t *testing.T) {
	// Each point is an event the killer waits for.
	points := []struct {
		name string
		seen func(dir string) bool
	}{
		{"initdb running", func(dir string) bool { return pgtest.CommandUnder(filepath.Join(dir, "data.new"), "initdb") }},
		{"initdb's bootstrap postgres running", func(dir string) bool { return pgtest.CommandUnder(filepath.Join(dir, "data.new"), "postgres") }},
		{"postmaster starting", func(dir string) bool {
			_, err := os.Stat(filepath.Join(dir, "data", "postmaster.pid"))
			return err == nil
		}},
	}
	for _, p := range points {
		for _, group := range []bool{false, true} {
			for _, then := range []string{"start", "destroy"} {
				if then == "destroy" && group {
					continue // one destroy-only run per point is enough
				}
				name := fmt.Sprintf("%s/kill group %v/then %s", p.name, group, then)
				t.Run(name, func(t *testing.T) {
					ctx := testCtx(t)
					dir := filepath.Join(reachableTempDir(t), "srv")
					t.Cleanup(func() { _ = localpg.New(localpg.Options{Dir: dir}).Destroy(context.Background()) })

					cmd := exec.Command(os.Args[0], "-test.run=^$")
					cmd.Env = append(os.Environ(), "LOCALPG_TEST_START="+dir, "LOCALPG_TEST_BIN="+binDir(t))
					cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
					var out bytes.Buffer
					cmd.Stdout, cmd.Stderr = &out, &out
					if err := cmd.Start(); err != nil {
						t.Fatal(err)
					}
					exited := make(chan struct{})
					go func() { _ = cmd.Wait(); close(exited) }()
					deadline := time.Now().Add(2 * time.Minute)
					for !p.seen(dir) {
						select {
						case <-exited:
							t.Fatalf("the starter finished before %q was seen; output:\n%s", p.name, out.String())
						default:
						}
						if time.Now().After(deadline) {
							t.Fatalf("%q never seen", p.name)
						}
						time.Sleep(2 * time.Millisecond)
					}
					if group {
						_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					} else {
						_ = cmd.Process.Kill()
					}
					<-exited

					s := localpg.New(localpg.Options{Dir: dir, BinDir: binDir(t)})
					if then == "start" {
						if err := s.Start(ctx); err != nil {
							t.Fatalf("Start after the kill: %v", err)
						}
						wantVotrServer(t, ctx, s)
						pgtest.CreateDB(t, s, "after_kill")
					}
					if err := s.Destroy(ctx); err != nil {
						t.Fatalf("Destroy after the kill: %v", err)
					}
					wantNothingLeft(t, dir)
				})
			}
		}
	}
}

// TestHalfMadeAndForeignStates: what an interrupted older votr, or another
// program, can leave; Start must end with votr's server on votr's port.
func TestHalfMadeAndForeignStates(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, s *localpg.Server) (oldPID int)
		check func(t *testing.T, ctx context.Context, s *localpg.Server)
	}{
		{"complete-looking cluster left in data.new", func(t *testing.T, s *localpg.Server) int {
			// Interrupted before the rename: no data/, no port file yet.
			must(t, os.Rename(filepath.Join(s.Dir(), "data"), filepath.Join(s.Dir(), "data.new")))
			must(t, os.Remove(filepath.Join(s.Dir(), "port")))
			return 0
		}, func(t *testing.T, ctx context.Context, s *localpg.Server) {
			if n := pgtest.QueryInt(t, s.DSN("postgres"), `SELECT count(*) FROM pg_database WHERE datname = 'marker'`); n != 0 {
				t.Error("the leftover cluster was used instead of a new one")
			}
		}},
		{"PG_VERSION but no include of votr's settings", func(t *testing.T, s *localpg.Server) int {
			conf := filepath.Join(s.Dir(), "data", "postgresql.conf")
			b, err := os.ReadFile(conf)
			must(t, err)
			must(t, os.WriteFile(conf, []byte(strings.ReplaceAll(string(b), "include 'votr.conf'", "")), 0o600))
			must(t, os.Remove(filepath.Join(s.Dir(), "data", "votr.conf")))
			return 0
		}, func(t *testing.T, ctx context.Context, s *localpg.Server) {
			b, err := os.ReadFile(filepath.Join(s.Dir(), "data", "postgresql.conf"))
			if err != nil || !strings.Contains(string(b), "include 'votr.conf'") {
				t.Errorf("include not restored: %v", err)
			}
		}},
		{"postmaster.pid without a pid (a postmaster died between creating and writing it)", func(t *testing.T, s *localpg.Server) int {
			// PostgreSQL refuses to start beside it ("lock file is empty");
			// Start waits a moment (it may be another postmaster's, about
			// to be written), then removes it and keeps the cluster.
			must(t, os.WriteFile(filepath.Join(s.Dir(), "data", "postmaster.pid"), nil, 0o600))
			return 0
		}, func(t *testing.T, ctx context.Context, s *localpg.Server) {
			if n := pgtest.QueryInt(t, s.DSN("postgres"), `SELECT count(*) FROM pg_database WHERE datname = 'marker'`); n != 1 {
				t.Error("the cluster was not kept")
			}
		}},
		{"postmaster started by hand on another port with wal_level=replica", func(t *testing.T, s *localpg.Server) int {
			port := freeTCPPort(t)
			pid := spawnForeign(t, s, port, "-c", "wal_level=replica")
			if got := s.Port(); got != port {
				t.Errorf("Port() = %d while the server runs on %d: DSN and Running would disagree", got, port)
			}
			if !s.Running(testCtx(t)) {
				t.Error("Running() false for a server running on another port")
			}
			return pid
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			s := pgtest.Start(t)
			pgtest.CreateDB(t, s, "marker")
			must(t, s.Stop(ctx))
			oldPID := tc.setup(t, s)
			if err := s.Start(ctx); err != nil {
				t.Fatalf("Start: %v", err)
			}
			wantVotrServer(t, ctx, s)
			if oldPID != 0 && pidAlive(oldPID) {
				t.Errorf("the postmaster started with other settings (pid %d) still runs", oldPID)
			}
			if tc.check != nil {
				tc.check(t, ctx, s)
			}
			dir := s.Dir()
			must(t, s.Destroy(ctx))
			wantNothingLeft(t, dir)
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestDestroyInAnyState: Destroy removes a managed server whatever state
// it is in, and leaves no process.
func TestDestroyInAnyState(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, s *localpg.Server) []int // pids that must end
	}{
		{"running", func(t *testing.T, s *localpg.Server) []int {
			return []int{postmasterPID(t, s)}
		}},
		{"stale pid (postmaster killed)", func(t *testing.T, s *localpg.Server) []int {
			pid := postmasterPID(t, s)
			must(t, syscall.Kill(pid, syscall.SIGKILL))
			return nil
		}},
		{"running on another port, started by hand", func(t *testing.T, s *localpg.Server) []int {
			must(t, s.Stop(testCtx(t)))
			return []int{spawnForeign(t, s, freeTCPPort(t))}
		}},
		{"half-made (interrupted creation)", func(t *testing.T, s *localpg.Server) []int {
			must(t, s.Stop(testCtx(t)))
			must(t, os.Rename(filepath.Join(s.Dir(), "data"), filepath.Join(s.Dir(), "data.new")))
			return nil
		}},
		{"postmaster hung (SIGSTOP: ignores shutdown requests)", func(t *testing.T, s *localpg.Server) []int {
			pid := postmasterPID(t, s)
			must(t, syscall.Kill(pid, syscall.SIGSTOP))
			return []int{pid}
		}},
		{"data directory deleted under a running postmaster", func(t *testing.T, s *localpg.Server) []int {
			pid := postmasterPID(t, s)
			must(t, os.RemoveAll(filepath.Join(s.Dir(), "data")))
			return []int{pid}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			s := pgtest.Start(t)
			pids := tc.setup(t, s)
			if err := localpg.New(localpg.Options{Dir: s.Dir()}).Destroy(ctx); err != nil {
				t.Fatalf("Destroy: %v", err)
			}
			wantNothingLeft(t, s.Dir())
			for _, pid := range pids {
				if pidAlive(pid) {
					t.Errorf("postmaster %d survived Destroy", pid)
				}
			}
		})
	}
}

// TestDataDirDeleted: a data directory deleted under a running server is
// reported (DataLost), the old postmaster is stopped, and Start makes a new
// empty cluster on the same port.
func TestDataDirDeleted(t *testing.T) {
	for _, c := range []struct {
		name   string
		delete func(data string) error
	}{
		{"whole", os.RemoveAll},
		// A removal cut short after PG_VERSION went: what is left is
		// no cluster, and must not stop the new one.
		{"partly", func(data string) error { return os.Remove(filepath.Join(data, "PG_VERSION")) }},
	} {
		t.Run(c.name, func(t *testing.T) { dataDirDeleted(t, c.delete) })
	}
}

func dataDirDeleted(t *testing.T, deleteData func(string) error) {
	ctx := testCtx(t)
	s := pgtest.Start(t)
	pgtest.CreateDB(t, s, "precious")
	port, pid := s.Port(), postmasterPID(t, s)
	if s.DataLost() {
		t.Fatal("DataLost() on an intact server")
	}
	must(t, deleteData(filepath.Join(s.Dir(), "data")))
	if !pidAlive(pid) {
		t.Fatal("test premise: the postmaster should outlive its data directory")
	}
	if !s.DataLost() || s.Exists() {
		t.Fatalf("after deleting data/: DataLost %v, Exists %v; want true, false", s.DataLost(), s.Exists())
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if pidAlive(pid) {
		t.Errorf("the postmaster of the deleted directory (pid %d) still runs", pid)
	}
	wantVotrServer(t, ctx, s)
	if s.Port() != port {
		t.Errorf("new cluster on port %d, the old one was on %d", s.Port(), port)
	}
	if s.DataLost() {
		t.Error("DataLost() still true after re-creation")
	}
	if n := pgtest.QueryInt(t, s.DSN("postgres"), `SELECT count(*) FROM pg_database WHERE datname = 'precious'`); n != 0 {
		t.Error("database of the deleted cluster is still served")
	}
}

// fakeBinDir makes a bin directory with the real postgres and pg_ctl and an
// initdb script (run as the server user, so everything is reachable).
func fakeBinDir(t *testing.T, initdb string) (dir, calls string) {
	t.Helper()
	base := reachableTempDir(t)
	dir = filepath.Join(base, "bin")
	must(t, os.Mkdir(dir, 0o755))
	for _, p := range []string{"postgres", "pg_ctl"} {
		must(t, os.Symlink(filepath.Join(binDir(t), p), filepath.Join(dir, p)))
	}
	calls = filepath.Join(base, "calls")
	must(t, os.WriteFile(calls, nil, 0o666))
	must(t, os.Chmod(calls, 0o666))
	script := "#!/bin/sh\necho \"$*\" >> " + calls + "\n" + initdb
	must(t, os.WriteFile(filepath.Join(dir, "initdb"), []byte(script), 0o755))
	return dir, calls
}

// initdbBanner is what initdb prints before it fails: it names the locale,
// which is what made any failure look like a missing locale.
const initdbBanner = `echo 'The files belonging to this database system will be owned by user "postgres".'
echo 'The database cluster will be initialized with locale "C.UTF-8".'
`

func TestInitdbFailures(t *testing.T) {
	tests := []struct {
		name      string
		initdb    string
		wantErr   string // "" for success
		wantCalls int
		wantLog   string
	}{
		{"full disk: initdb's own error, no locale fallback",
			initdbBanner + "echo 'initdb: error: could not write file \"base/1/1259\": No space left on device' >&2\nexit 1\n",
			"No space left on device", 1, ""},
		{"C.UTF-8 missing: falls back to C, and says so",
			initdbBanner + "case \"$*\" in *--locale=C.UTF-8*) echo 'initdb: error: invalid locale name \"C.UTF-8\"' >&2; exit 1;; esac\nexec REAL_INITDB \"$@\"\n",
			"", 2, "C.UTF-8 locale is not available"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			bin, calls := fakeBinDir(t, strings.ReplaceAll(tc.initdb, "REAL_INITDB", filepath.Join(binDir(t), "initdb")))
			var logs bytes.Buffer
			s := localpg.New(localpg.Options{Dir: filepath.Join(reachableTempDir(t), "srv"), BinDir: bin,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			t.Cleanup(func() { _ = s.Destroy(context.Background()) })
			err := s.Init(ctx)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Init: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Init error = %v, want it to contain %q", err, tc.wantErr)
			}
			if tc.wantErr != "" && strings.Contains(strings.ToLower(logs.String()), "locale") {
				t.Errorf("the log blames the locale:\n%s", logs.String())
			}
			b, _ := os.ReadFile(calls)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) != tc.wantCalls {
				t.Errorf("initdb ran %d times, want %d:\n%s", len(lines), tc.wantCalls, b)
			}
			if tc.wantLog != "" && !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log lacks %q:\n%s", tc.wantLog, logs.String())
			}
			if tc.wantErr == "" {
				if !strings.Contains(lines[len(lines)-1], "--locale=C ") {
					t.Errorf("fallback initdb call lacks --locale=C: %s", lines[len(lines)-1])
				}
				if !s.Exists() {
					t.Error("no cluster after the fallback")
				}
			} else if s.Exists() {
				t.Error("a failed initdb left a cluster that counts as existing")
			}
		})
	}
}

// TestClusterBinaries: an existing cluster is run by the binaries of its
// own major version; binaries of another version are refused with a clear
// error.
func TestClusterBinaries(t *testing.T) {
	ctx := testCtx(t)
	s := stopped(t)
	other := filepath.Join(reachableTempDir(t), "pg99")
	must(t, os.Mkdir(other, 0o755))
	for _, p := range []string{"initdb", "pg_ctl"} {
		must(t, os.Symlink(filepath.Join(binDir(t), p), filepath.Join(other, p)))
	}
	must(t, os.WriteFile(filepath.Join(other, "postgres"), []byte("#!/bin/sh\necho 'postgres (PostgreSQL) 99.1'\n"), 0o755))
	err := localpg.New(localpg.Options{Dir: s.Dir(), BinDir: other}).Start(ctx)
	if err == nil {
		t.Fatal("Start with binaries of another major version succeeded")
	}
	v, rerr := os.ReadFile(filepath.Join(s.Dir(), "data", "PG_VERSION"))
	must(t, rerr)
	major := strings.TrimSpace(string(v))
	for _, want := range []string{"made with PostgreSQL " + major, "PostgreSQL 99", "postgresql-" + major} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if s.Running(ctx) {
		t.Error("a refused start left a server running")
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start with the cluster's own binaries: %v", err)
	}
}

// TestCancelledStartLeavesNothingRunning: a Start given up (its context
// cancelled while the postmaster is coming up) stops the postmaster it
// started, instead of leaving a server nobody waits for.
func TestCancelledStartLeavesNothingRunning(t *testing.T) {
	s := stopped(t)
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithCancel(testCtx(t))
		go func() {
			// Cancel as soon as a postmaster exists, before it is ready.
			for ctx.Err() == nil {
				if _, err := os.Stat(filepath.Join(s.Dir(), "data", "postmaster.pid")); err == nil {
					cancel()
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
		err := s.Start(ctx)
		cancel()
		if err == nil {
			// The server was ready before the cancel: try again.
			must(t, s.Stop(testCtx(t)))
			if attempt == 20 {
				t.Fatal("the server was always ready before the cancel; cannot test")
			}
			continue
		}
		if !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("Start: %v, want a cancellation", err)
		}
		if pids := s.Processes(); len(pids) > 0 {
			t.Fatalf("a cancelled Start left PostgreSQL processes %v running", pids)
		}
		break
	}
	if err := s.Start(testCtx(t)); err != nil {
		t.Fatalf("Start after a cancelled one: %v", err)
	}
	wantVotrServer(t, testCtx(t), s)
}
