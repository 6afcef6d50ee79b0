// Package localpg runs a PostgreSQL server that votr manages itself: it
// creates the cluster with initdb from the binaries on the machine, configures
// it for logical replication, starts it on a loopback port, and stops and
// removes it on demand.
//
// Layout under Options.Dir:
//
//	data/        the cluster (PGDATA); votr's settings live in data/votr.conf,
//	             included from postgresql.conf and rewritten at every start
//	server.log   the server's log (pg_ctl -l)
//	socket/      the Unix socket directory (unused when its path is too long
//	             for a socket; the server is then reachable over TCP only)
//	port         the TCP port the server was given, kept across restarts
//
// Security: initdb uses --auth=trust and the server listens on 127.0.0.1
// only, so any local OS user can connect as the superuser "postgres". That is
// the trade-off of a zero-configuration development server; do not put data
// on it that local users must not read.
//
// Disk safety: max_slot_wal_keep_size is 4GB, so a replication slot that is
// left behind (a feed that was never destroyed) cannot fill the disk with
// WAL; past that limit PostgreSQL invalidates the slot instead.
//
// Root: PostgreSQL refuses to run as root, so when votr is root the server
// programs run as the OS user "postgres" (created by Debian's package) and
// Dir is given to that user. That user must be able to traverse every
// directory above Dir. Directories inside the working directory tree get o+x
// when they lack it; directories outside it (such as /root) are never
// changed: Start fails instead, naming the directory, the chmod that would
// fix it, and the alternative of a state directory the user can reach.
package localpg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"
)

// Options says where a managed server lives and how to run it.
type Options struct {
	// Dir holds everything of this server (see the package doc).
	Dir string
	// BinDir holds initdb, pg_ctl and postgres; empty means FindBinDir("").
	BinDir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one when the cluster
	// is created and keeps it (a new one is picked if it is taken later).
	Port int
	// Logger receives lifecycle events; nil discards them.
	Logger *slog.Logger
}

// Server is one managed PostgreSQL server. Its methods are safe for
// concurrent use; they serialise on the server.
type Server struct {
	opts Options
	log  *slog.Logger

	mu   sync.Mutex
	port int // last port configured or seen running; 0 if unknown
}

// The settings logical replication needs, with room for many feeds. The
// slot/sender counts bound the number of feeds per server.
const replicationSettings = `wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
max_worker_processes = 16
max_logical_replication_workers = 8
max_slot_wal_keep_size = '4GB'
fsync = on
logging_collector = off
log_destination = 'stderr'
`

const (
	settingsFile = "votr.conf"
	includeLine  = "include '" + settingsFile + "'"
	// maxSocketPath is the room in sockaddr_un.sun_path (107 bytes plus NUL
	// on Linux); PostgreSQL refuses longer socket paths.
	maxSocketPath = 107
	startTimeout  = 60 * time.Second
)

// New returns a handle on the server in opts.Dir. It touches nothing.
func New(opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if abs, err := filepath.Abs(opts.Dir); err == nil {
		opts.Dir = abs
	}
	return &Server{opts: opts, log: log.With("pgdir", opts.Dir)}
}

func (s *Server) dataDir() string   { return filepath.Join(s.opts.Dir, "data") }
func (s *Server) logFile() string   { return filepath.Join(s.opts.Dir, "server.log") }
func (s *Server) socketDir() string { return filepath.Join(s.opts.Dir, "socket") }
func (s *Server) portFile() string  { return filepath.Join(s.opts.Dir, "port") }
func (s *Server) pidFile() string   { return filepath.Join(s.dataDir(), "postmaster.pid") }

// Dir is the directory that holds everything of this server.
func (s *Server) Dir() string { return s.opts.Dir }

// Exists reports whether the cluster has been created (initdb finished).
func (s *Server) Exists() bool {
	_, err := os.Stat(filepath.Join(s.dataDir(), "PG_VERSION"))
	return err == nil
}

// Port returns the server's TCP port: the one it runs on or was last given,
// else the stored one, else Options.Port (0 if none is known yet).
func (s *Server) Port() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.port != 0 {
		return s.port
	}
	if p := s.storedPort(); p != 0 {
		return p
	}
	return s.opts.Port
}

// DSN is the connection string for database on this server, as the
// superuser over loopback TCP.
func (s *Server) DSN(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port(), url.PathEscape(database))
}

// Running reports whether the postmaster is alive and accepts connections.
func (s *Server) Running(ctx context.Context) bool {
	pm, ok := s.readPidFile()
	if !ok || !pm.alive() || !pm.isOurs(s.dataDir()) {
		return false
	}
	return ping(ctx, pm.port) == nil
}

// Init creates the directory layout and the cluster if it does not exist,
// without starting the server. Start calls it; it is exported so a caller can
// prepare a cluster once and copy its data directory (tests do).
func (s *Server) Init(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _, err := s.prepare(ctx)
	return err
}

// Start makes the server run: it creates the cluster if needed, reuses a
// server that is already running, copes with a stale postmaster.pid, and
// returns once the server accepts connections.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	bin, acct, err := s.prepare(ctx)
	if err != nil {
		return err
	}
	if pm, ok := s.readPidFile(); ok {
		if pm.alive() && pm.isOurs(s.dataDir()) {
			// Someone (an earlier votr, another process) started it; reuse it
			// once it answers, which covers a server still in recovery. It may
			// also be dying (just killed), which makes it a stale pid below.
			err := waitReady(ctx, pm.port, startTimeout, pm.alive)
			switch {
			case err == nil:
				s.port = pm.port
				s.log.Info("reusing running PostgreSQL server", "pid", pm.pid, "port", pm.port)
				return nil
			case !errors.Is(err, errDied):
				return s.withLog(fmt.Errorf("server %s is running (pid %d) but does not accept connections on port %d: %w",
					s.opts.Dir, pm.pid, pm.port, err))
			}
		}
		switch {
		case pm.alive() && pm.isOurs(s.dataDir()):
			return fmt.Errorf("server %s: postmaster pid %d is in an unexpected state", s.opts.Dir, pm.pid)
		case pm.alive():
			// The pid was recycled by an unrelated process (e.g. after a
			// reboot); PostgreSQL would mistake it for a live postmaster.
			// Our postmaster is long gone, and with it its backends.
			s.log.Warn("removing stale postmaster.pid: its pid now belongs to another program", "pid", pm.pid)
			if err := os.Remove(s.pidFile()); err != nil {
				return fmt.Errorf("remove stale %s: %w", s.pidFile(), err)
			}
		default:
			s.log.Info("found stale postmaster.pid (server was not shut down cleanly)", "pid", pm.pid)
			if err := s.clearStalePid(ctx, pm); err != nil {
				return err
			}
		}
	}
	return s.startServer(ctx, bin, acct)
}

// clearStalePid deals with the lock file of a postmaster that died.
//
// If the process is gone, PostgreSQL removes the stale file itself, after
// checking that no orphaned backend still uses the old shared memory. But a
// killed postmaster can linger as a zombie (an init that reaps slowly, as in
// some containers), and PostgreSQL takes a zombie for a live postmaster. So
// for a zombie we make PostgreSQL's own check: once nothing is attached to the
// old shared memory segment, no old process can touch the data, and the lock
// file can go.
func (s *Server) clearStalePid(ctx context.Context, pm postmaster) error {
	deadline := time.Now().Add(startTimeout)
	for {
		if errors.Is(syscall.Kill(pm.pid, 0), syscall.ESRCH) {
			return nil // gone: PostgreSQL handles the rest
		}
		if n, err := shmAttached(pm.shmID); err != nil || n == 0 {
			if err := s.removeLockFiles(pm.pid); err != nil {
				return err
			}
			s.log.Info("removed lock files of a dead postmaster (its process is an unreaped zombie)", "pid", pm.pid, "shm_attached", n, "shm_err", err)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server %s: processes of the dead postmaster (pid %d) still use its shared memory after %s; "+
				"find them with `ps -o pid,cmd -u %s` and stop them, then start again", s.opts.Dir, pm.pid, startTimeout, currentServerUser())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// removeLockFiles removes postmaster.pid and the socket lock files that
// name pid. The socket directory is this server's alone.
func (s *Server) removeLockFiles(pid int) error {
	locks, _ := filepath.Glob(filepath.Join(s.socketDir(), ".s.PGSQL.*.lock"))
	for _, l := range locks {
		b, err := os.ReadFile(l)
		if err != nil || strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]) != strconv.Itoa(pid) {
			continue
		}
		if err := os.Remove(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale %s: %w", l, err)
		}
		_ = os.Remove(strings.TrimSuffix(l, ".lock")) // its socket
	}
	if err := os.Remove(s.pidFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", s.pidFile(), err)
	}
	return nil
}

// shmAttached counts the processes attached to a System V shared memory
// segment; an error means it is gone (or unknown).
func shmAttached(id int) (uint64, error) {
	if id <= 0 {
		return 0, errors.New("no segment recorded")
	}
	var desc unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &desc); err != nil {
		return 0, err
	}
	return desc.Nattch, nil
}

func currentServerUser() string {
	if os.Geteuid() == 0 {
		return serverUser
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "$USER"
}

// startServer configures the port and runs pg_ctl start, retrying the cases
// that resolve themselves: a port grabbed by someone else between our check
// and the server's bind, and the dying children of a killed postmaster that
// still hold the old shared memory.
func (s *Server) startServer(ctx context.Context, bin string, acct *account) error {
	deadline := time.Now().Add(startTimeout)
	forceNewPort := false
	for attempt := 1; ; attempt++ {
		port, err := s.choosePort(forceNewPort)
		if err != nil {
			return err
		}
		if err := s.writeSettings(port, acct); err != nil {
			return err
		}
		logStart := s.logSize()
		out, err := s.run(ctx, acct, filepath.Join(bin, "pg_ctl"), "start", "-w", "-t", strconv.Itoa(int(startTimeout.Seconds())),
			"-D", s.dataDir(), "-l", s.logFile())
		if err == nil {
			if err := waitReady(ctx, port, startTimeout, nil); err != nil {
				return s.withLog(fmt.Errorf("server %s started but does not accept connections on port %d: %w", s.opts.Dir, port, err))
			}
			s.port = port
			s.log.Info("started PostgreSQL server", "port", port)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("start server %s: %w", s.opts.Dir, ctx.Err())
		}
		fresh := s.logSince(logStart)
		retry := time.Now().Before(deadline) && attempt < 20
		switch {
		case retry && s.opts.Port == 0 && strings.Contains(fresh, "could not bind"):
			s.log.Warn("port was taken while starting; picking another", "port", port)
			forceNewPort = true
			continue
		case retry && strings.Contains(fresh, "shared memory block") && strings.Contains(fresh, "still in use"):
			// Children of a killed postmaster exit within moments.
			time.Sleep(200 * time.Millisecond)
			continue
		}
		return s.withLog(fmt.Errorf("start server %s: pg_ctl: %w: %s", s.opts.Dir, err, strings.TrimSpace(out)))
	}
}

// Stop shuts the server down with the "fast" mode (sessions are ended,
// data is safe). It does nothing if the server is not running.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stop(ctx, "fast")
}

// Restart stops the server with mode ("fast", or "immediate" which
// simulates a crash: the next start runs recovery) and starts it again.
func (s *Server) Restart(ctx context.Context, mode string) error {
	if mode != "fast" && mode != "immediate" {
		return fmt.Errorf("restart %s: unknown mode %q: use \"fast\" or \"immediate\"", s.opts.Dir, mode)
	}
	s.mu.Lock()
	err := s.stop(ctx, mode)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.Start(ctx)
}

// Destroy stops the server and removes Dir with all its data.
func (s *Server) Destroy(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stop(ctx, "fast"); err != nil {
		s.log.Warn("fast shutdown failed; trying immediate", "err", err)
		if err2 := s.stop(ctx, "immediate"); err2 != nil {
			// Never delete the files of a server that may still run.
			return fmt.Errorf("destroy %s: %w", s.opts.Dir, errors.Join(err, err2))
		}
	}
	if err := os.RemoveAll(s.opts.Dir); err != nil {
		return fmt.Errorf("destroy %s: %w", s.opts.Dir, err)
	}
	s.port = 0
	s.log.Info("destroyed PostgreSQL server")
	return nil
}

func (s *Server) stop(ctx context.Context, mode string) error {
	pm, ok := s.readPidFile()
	if !ok || !pm.alive() || !pm.isOurs(s.dataDir()) {
		return nil
	}
	bin, err := s.binDir()
	if err != nil {
		return err
	}
	acct, err := serverAccount()
	if err != nil {
		return err
	}
	out, err := s.run(ctx, acct, filepath.Join(bin, "pg_ctl"), "stop", "-w", "-m", mode, "-t", "60", "-D", s.dataDir())
	if err != nil {
		if !pm.alive() {
			return nil // it went away on its own meanwhile
		}
		return s.withLog(fmt.Errorf("stop server %s (%s): %w: %s", s.opts.Dir, mode, err, strings.TrimSpace(out)))
	}
	s.log.Info("stopped PostgreSQL server", "mode", mode)
	return nil
}

// prepare resolves the binaries and the account, creates the layout with the
// right owners, and runs initdb if the cluster does not exist.
func (s *Server) prepare(ctx context.Context) (bin string, acct *account, err error) {
	if s.opts.Dir == "" {
		return "", nil, errors.New("localpg: Options.Dir is empty: say where the server's data goes")
	}
	if bin, err = s.binDir(); err != nil {
		return "", nil, err
	}
	if acct, err = serverAccount(); err != nil {
		return "", nil, err
	}
	if err := s.makeDirs(acct); err != nil {
		return "", nil, err
	}
	if s.Exists() {
		if !acct.owns(s.dataDir()) {
			// A data directory copied or restored by root: hand it back.
			s.log.Info("giving data directory to the server user", "user", acct.name)
			if err := acct.chownTree(s.dataDir()); err != nil {
				return "", nil, fmt.Errorf("chown %s: %w", s.dataDir(), err)
			}
		}
		return bin, acct, nil
	}
	return bin, acct, s.initdb(ctx, bin, acct)
}

func (s *Server) binDir() (string, error) {
	if s.opts.BinDir != "" {
		return FindBinDir(s.opts.BinDir)
	}
	return FindBinDir("")
}

func (s *Server) makeDirs(acct *account) error {
	dir := s.opts.Dir
	if acct != nil {
		// Checked before creating anything, so a refusal leaves no trace.
		cwd, _ := os.Getwd()
		if err := acct.ensureReachable(dir, cwd, s.log.Warn); err != nil {
			return err
		}
	}
	created := firstMissing(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if acct != nil {
		// Directories we just made above Dir must not block the server user,
		// whatever the umask was.
		for p := dir; created != "" && within(p, created); p = filepath.Dir(p) {
			if err := os.Chmod(p, 0o755); err != nil {
				return fmt.Errorf("chmod %s: %w", p, err)
			}
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	if err := acct.chown(dir); err != nil {
		return fmt.Errorf("chown %s to %s: %w", dir, serverUser, err)
	}
	if err := os.MkdirAll(s.socketDir(), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", s.socketDir(), err)
	}
	if err := acct.chown(s.socketDir()); err != nil {
		return fmt.Errorf("chown %s to %s: %w", s.socketDir(), serverUser, err)
	}
	return nil
}

// firstMissing returns the topmost directory of dir's path that does not
// exist yet ("" if dir exists).
func firstMissing(dir string) string {
	missing := ""
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			return missing
		}
		missing = p
		if p == filepath.Dir(p) {
			return missing
		}
	}
}

func (s *Server) initdb(ctx context.Context, bin string, acct *account) error {
	start := time.Now()
	// A half-made data directory from an interrupted initdb would make
	// initdb refuse ("exists but is not empty").
	if err := os.RemoveAll(s.dataDir()); err != nil {
		return fmt.Errorf("remove incomplete %s: %w", s.dataDir(), err)
	}
	args := []string{"-D", s.dataDir(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"}
	out, err := s.run(ctx, acct, filepath.Join(bin, "initdb"), args...)
	if err != nil && strings.Contains(out, "locale") {
		// Systems without the C.UTF-8 locale: the plain C locale with UTF8
		// encoding behaves the same for votr.
		s.log.Warn("initdb: C.UTF-8 locale unavailable, using C", "output", lastLines(out, 3))
		_ = os.RemoveAll(s.dataDir())
		args[7] = "--locale=C"
		out, err = s.run(ctx, acct, filepath.Join(bin, "initdb"), args...)
	}
	if err != nil {
		return fmt.Errorf("initdb %s: %w: %s", s.dataDir(), err, lastLines(out, 15))
	}
	conf := filepath.Join(s.dataDir(), "postgresql.conf")
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("configure %s: %w", conf, err)
	}
	_, werr := fmt.Fprintf(f, "\n# votr: managed settings (rewritten at every start)\n%s\n", includeLine)
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("configure %s: %w", conf, err)
	}
	// The port is chosen now so that DSN is known before the first start.
	port, err := s.choosePort(false)
	if err != nil {
		return err
	}
	s.port = port
	s.log.Info("created PostgreSQL cluster", "port", port, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// choosePort returns the port to start on and stores it: Options.Port if
// set, else the stored one, else a fresh free one. A stored port that is now
// taken by another program is replaced; an explicit one is an error.
func (s *Server) choosePort(forceNew bool) (int, error) {
	port := s.opts.Port
	switch {
	case port != 0:
		if !portFree(port) {
			return 0, fmt.Errorf("start server %s: port %d on 127.0.0.1 is in use by another program; "+
				"stop it or choose another port (or 0 to pick a free one)", s.opts.Dir, port)
		}
	default:
		stored := s.storedPort()
		port = stored
		if forceNew || port == 0 || !portFree(port) {
			p, err := freePort()
			if err != nil {
				return 0, fmt.Errorf("start server %s: pick a free port: %w", s.opts.Dir, err)
			}
			if stored != 0 {
				s.log.Warn("stored port is taken by another program; moving the server to a new port", "old", stored, "new", p)
			}
			port = p
		}
	}
	if err := os.WriteFile(s.portFile(), []byte(strconv.Itoa(port)+"\n"), 0o644); err != nil {
		return 0, fmt.Errorf("store port: %w", err)
	}
	return port, nil
}

func (s *Server) storedPort() int {
	b, err := os.ReadFile(s.portFile())
	if err != nil {
		return 0
	}
	p, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || p <= 0 || p > 65535 {
		return 0
	}
	return p
}

// writeSettings writes data/votr.conf for this start: the per-start values
// (port, socket path, which moves when a data directory is copied) and the
// replication settings.
func (s *Server) writeSettings(port int, acct *account) error {
	sock := s.socketDir()
	if len(sock)+len("/.s.PGSQL.65535.lock") > maxSocketPath {
		s.log.Info("socket directory path too long for a Unix socket; TCP only", "socket", sock)
		sock = ""
	}
	var b strings.Builder
	b.WriteString("# Written by votr at every start; edit postgresql.auto.conf (ALTER SYSTEM) instead.\n")
	b.WriteString("listen_addresses = '127.0.0.1'\n")
	fmt.Fprintf(&b, "port = %d\n", port)
	fmt.Fprintf(&b, "unix_socket_directories = '%s'\n", strings.ReplaceAll(sock, "'", "''"))
	b.WriteString(replicationSettings)
	p := filepath.Join(s.dataDir(), settingsFile)
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := acct.chown(p); err != nil {
		return fmt.Errorf("chown %s: %w", p, err)
	}
	return nil
}

// run executes a server program as the account, in Dir (the server user may
// not be able to enter our working directory), and returns its output.
func (s *Server) run(ctx context.Context, acct *account, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = s.opts.Dir
	cmd.SysProcAttr = acct.credential()
	cmd.Env = serverEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// serverEnv is our environment without libpq/server variables that would
// override the explicit flags and config (PGPORT, PGDATA, PGHOST, ...).
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

// withLog appends the tail of server.log to err: start failures are
// explained there, not in pg_ctl's output.
func (s *Server) withLog(err error) error {
	b, rerr := os.ReadFile(s.logFile())
	if rerr != nil || len(bytes.TrimSpace(b)) == 0 {
		return err
	}
	return fmt.Errorf("%w\nlast lines of %s:\n%s", err, s.logFile(), lastLines(string(b), 20))
}

func (s *Server) logSize() int64 {
	fi, err := os.Stat(s.logFile())
	if err != nil {
		return 0
	}
	return fi.Size()
}

func (s *Server) logSince(off int64) string {
	b, err := os.ReadFile(s.logFile())
	if err != nil || int64(len(b)) < off {
		return string(b)
	}
	return string(b[off:])
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// postmaster is what postmaster.pid says about a server.
type postmaster struct {
	pid   int
	port  int
	shmID int // System V shared memory id of the main segment
}

func (s *Server) readPidFile() (postmaster, bool) {
	f, err := os.Open(s.pidFile())
	if err != nil {
		return postmaster{}, false
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() && len(lines) < 7 {
		lines = append(lines, strings.TrimSpace(sc.Text()))
	}
	if len(lines) < 1 {
		return postmaster{}, false
	}
	pid, err := strconv.Atoi(lines[0])
	if err != nil || pid <= 0 {
		return postmaster{}, false
	}
	pm := postmaster{pid: pid}
	if len(lines) >= 4 {
		pm.port, _ = strconv.Atoi(lines[3])
	}
	if len(lines) >= 7 {
		// "key id", both right-aligned in fixed-width fields.
		if f := strings.Fields(lines[6]); len(f) == 2 {
			pm.shmID, _ = strconv.Atoi(f[1])
		}
	}
	return pm, true
}

// alive reports whether the process exists and is not a zombie: a killed
// postmaster is reparented to init, and some inits reap slowly.
func (pm postmaster) alive() bool {
	err := syscall.Kill(pm.pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pm.pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the command name in parentheses, which may itself
	// contain spaces or parentheses.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		switch b[i+2] {
		case 'Z', 'X', 'x':
			return false
		}
	}
	return true
}

// isOurs tells this server's live postmaster from an unrelated process that
// got its pid (after a reboot, say): a postmaster runs PostgreSQL with its
// data directory as working directory. What /proc does not let us see, we
// assume is ours.
func (pm postmaster) isOurs(dataDir string) bool {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pm.pid)); err == nil {
		comm := strings.TrimSpace(string(b))
		if !strings.HasPrefix(comm, "postgres") && !strings.HasPrefix(comm, "postmaster") {
			return false
		}
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pm.pid))
	if err != nil {
		return true
	}
	if real, err := filepath.EvalSymlinks(dataDir); err == nil {
		dataDir = real
	}
	return cwd == dataDir
}

// ping connects once to the server's postgres database.
func ping(ctx context.Context, port int) error {
	if port == 0 {
		return errors.New("no port known")
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=3", port))
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// errDied says the server process went away while we waited for it.
var errDied = errors.New("server process exited")

// waitReady polls until the server accepts a connection, timeout passes, or
// (if given) alive says the server process is gone.
func waitReady(ctx context.Context, port int, timeout time.Duration, alive func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ping(ctx, port)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if alive != nil && !alive() {
			return errDied
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
