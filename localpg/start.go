package localpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"
)

// reuseRunning deals with what postmaster.pid says: a running server with
// votr's settings is reused (true); one started with other settings is
// stopped, to be started again with votr's; a stale pid file is cleared.
func (s *Server) reuseRunning(ctx context.Context) (bool, error) {
	if err := s.waitPidFileWritten(ctx); err != nil {
		return false, err
	}
	pm, ok := s.readPidFile()
	if !ok {
		return false, nil
	}
	if pm.alive() && pm.isOurs(s.dataDir()) {
		// Someone (an earlier votr, another process) started it; reuse it
		// once it answers, which covers a server still in recovery. It may
		// also be dying (just killed), which makes it a stale pid below.
		err := waitReady(ctx, pm.port, s.secret(), startTimeout, pm.alive)
		switch {
		case err == nil:
			diffs, err := s.settingsDiffer(ctx, pm.port)
			if err != nil {
				return false, fmt.Errorf("server %s is running (pid %d, port %d) but votr cannot check its settings: %w", s.opts.Dir, pm.pid, pm.port, err)
			}
			if len(diffs) == 0 {
				s.port = pm.port
				s.log.Info("reusing running PostgreSQL server", "pid", pm.pid, "port", pm.port)
				return true, nil
			}
			s.log.Warn("the running server was started with other settings than votr's; restarting it",
				"pid", pm.pid, "port", pm.port, "differences", strings.Join(diffs, "; "))
			return false, s.stop(ctx, "fast")
		case isAuthError(err):
			return false, fmt.Errorf("server %s is running (pid %d, port %d) but refuses votr's password (%v): it was not started by this votr; "+
				"stop it, or remove it with `votr destroy`", s.opts.Dir, pm.pid, pm.port, err)
		case !errors.Is(err, errDied):
			return false, s.withLog(fmt.Errorf("server %s is running (pid %d) but does not accept connections on port %d: %w; "+
				"`votr destroy` removes it in any state", s.opts.Dir, pm.pid, pm.port, err))
		}
	}
	switch {
	case pm.alive() && pm.isOurs(s.dataDir()):
		return false, fmt.Errorf("server %s: postmaster pid %d is in an unexpected state", s.opts.Dir, pm.pid)
	case pm.alive():
		// The pid was recycled by an unrelated process (e.g. after a
		// reboot); PostgreSQL would mistake it for a live postmaster.
		// Our postmaster is long gone, and with it its backends.
		s.log.Warn("removing stale postmaster.pid: its pid now belongs to another program", "pid", pm.pid)
		if err := os.Remove(s.pidFile()); err != nil {
			return false, fmt.Errorf("remove stale %s: %w", s.pidFile(), err)
		}
	default:
		s.log.Info("found stale postmaster.pid (server was not shut down cleanly)", "pid", pm.pid)
		if err := s.clearStalePid(ctx, pm); err != nil {
			return false, err
		}
	}
	return false, nil
}

// pidFileWriteWait bounds how long a postmaster.pid without a pid may be
// another postmaster's, between its creation and its first write.
const pidFileWriteWait = 5 * time.Second

// waitPidFileWritten waits while postmaster.pid exists without a pid in
// it: a postmaster creates the file, then writes it, and one started by a
// votr that was killed meanwhile may be between the two (on a busy machine
// for many milliseconds). Starting a second postmaster then fails ("lock
// file is empty") while the first comes up. A file still without a pid
// after pidFileWriteWait is the remnant of a postmaster that died there,
// and is removed, as PostgreSQL's own message advises.
func (s *Server) waitPidFileWritten(ctx context.Context) error {
	deadline := time.Now().Add(pidFileWriteWait)
	for {
		if _, err := os.Stat(s.pidFile()); errors.Is(err, os.ErrNotExist) {
			return nil
		} else if err != nil {
			return fmt.Errorf("read %s: %w", s.pidFile(), err)
		}
		if _, ok := s.readPidFile(); ok {
			return nil
		}
		if time.Now().After(deadline) {
			s.log.Warn("removing postmaster.pid without a pid: left by a postmaster that died while starting", "file", s.pidFile())
			if err := os.Remove(s.pidFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove %s: %w", s.pidFile(), err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// settingsDiffer compares a running server's settings with those votr
// starts it with, and lists the differences. A wal_level the user set with
// ALTER SYSTEM is theirs to keep (votr's checks report it); any other
// difference means the server was started by something else (an older
// votr, pg_ctl by hand, a creation that did not finish).
func (s *Server) settingsDiffer(ctx context.Context, port int) ([]string, error) {
	want := s.startSettings(port)
	if p := s.wantedPort(); p != 0 {
		want["port"] = strconv.Itoa(p)
	}
	want["wal_level"] = "logical"
	names := make([]string, 0, len(want))
	for k := range want {
		names = append(names, k)
	}
	sort.Strings(names)

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsnFor(port, s.secret(), "postgres"))
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT name, setting, coalesce(sourcefile, '') FROM pg_settings WHERE name = ANY($1) ORDER BY name`, names)
	if err != nil {
		return nil, err
	}
	var diffs []string
	for rows.Next() {
		var name, got, file string
		if err := rows.Scan(&name, &got, &file); err != nil {
			return nil, err
		}
		if got == want[name] || (name == "wal_level" && filepath.Base(file) == "postgresql.auto.conf") {
			continue
		}
		diffs = append(diffs, fmt.Sprintf("%s is %q, votr's is %q", name, got, want[name]))
	}
	return diffs, rows.Err()
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

// startServer writes votr's settings and starts the postmaster with them,
// retrying the cases that resolve themselves: a port grabbed by someone else
// between our check and the server's bind, and the dying children of a
// killed postmaster that still hold the old shared memory. A postmaster that
// does not become ready is stopped again: a failed start leaves nothing
// running.
func (s *Server) startServer(ctx context.Context, bin string, acct *account) error {
	deadline := time.Now().Add(startTimeout)
	forceNewPort := false
	for attempt := 1; ; attempt++ {
		port, err := s.choosePort(forceNewPort)
		if err != nil {
			return err
		}
		if err := s.storePort(port); err != nil {
			return err
		}
		if err := s.configure(s.dataDir(), port, acct); err != nil {
			return err
		}
		logStart := s.logSize()
		pm, err := s.spawn(bin, acct, port)
		if err != nil {
			return err
		}
		err = waitReady(ctx, port, s.secret(), startTimeout, pm.alive)
		if err == nil {
			s.port = port
			s.log.Info("started PostgreSQL server", "port", port, "pid", pm.pid)
			return nil
		}
		if !errors.Is(err, errDied) {
			pm.kill()
			if ctx.Err() != nil {
				return fmt.Errorf("start server %s: %w (the server it started was stopped again)", s.opts.Dir, ctx.Err())
			}
			return s.withLog(fmt.Errorf("start server %s: not ready on port %d: %w; the server it started was stopped again", s.opts.Dir, port, err))
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
		return s.withLog(fmt.Errorf("start server %s: postgres exited during startup", s.opts.Dir))
	}
}

// child is a postmaster this process started.
type child struct {
	pid  int
	done chan struct{} // closed once it has exited (and been reaped)
}

func (c *child) alive() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// kill stops the child immediately (SIGQUIT: PostgreSQL's immediate
// shutdown, which also ends its children), then for good.
func (c *child) kill() {
	for _, sig := range []syscall.Signal{syscall.SIGQUIT, syscall.SIGKILL} {
		_ = syscall.Kill(c.pid, sig)
		select {
		case <-c.done:
			return
		case <-time.After(15 * time.Second):
		}
	}
}

// spawn starts the postmaster in its own session with votr's start settings
// on its command line and its output appended to server.log.
func (s *Server) spawn(bin string, acct *account, port int) (*child, error) {
	lf, err := os.OpenFile(s.logFile(), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", s.logFile(), err)
	}
	defer lf.Close()
	args := []string{"-D", s.dataDir()}
	st := s.startSettings(port)
	for _, k := range []string{"listen_addresses", "port", "unix_socket_directories"} {
		args = append(args, "-c", k+"="+st[k])
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Dir = s.dataDir()
	cmd.Env = serverEnv()
	cmd.Stdout, cmd.Stderr = lf, lf
	attr := acct.credential()
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	// Its own session: a Ctrl-C meant for votr must not stop the server.
	attr.Setsid = true
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start server %s: %w", s.opts.Dir, err)
	}
	c := &child{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// stop shuts the server down: "fast" (SIGINT: sessions end, a checkpoint
// is written) or "immediate" (SIGQUIT: like a crash), and waits until the
// postmaster is gone.
func (s *Server) stop(ctx context.Context, mode string) error {
	return s.stopWithin(ctx, mode, startTimeout)
}

// stopWithin is stop with a bound on the wait for the postmaster to exit.
func (s *Server) stopWithin(ctx context.Context, mode string, wait time.Duration) error {
	pm, ok := s.readPidFile()
	if !ok || !pm.alive() || !pm.isOurs(s.dataDir()) {
		return nil
	}
	sig := syscall.SIGINT
	if mode == "immediate" {
		sig = syscall.SIGQUIT
	}
	if err := syscall.Kill(pm.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop server %s (%s): signal pid %d: %w", s.opts.Dir, mode, pm.pid, err)
	}
	deadline := time.Now().Add(wait)
	for pm.alive() {
		if time.Now().After(deadline) {
			return s.withLog(fmt.Errorf("stop server %s (%s): postmaster pid %d still runs after %s", s.opts.Dir, mode, pm.pid, wait))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stop server %s: %w", s.opts.Dir, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.log.Info("stopped PostgreSQL server", "mode", mode, "pid", pm.pid)
	return nil
}

// run executes a server program as the account, in Dir (the server user may
// not be able to enter our working directory), and returns its output.
func (s *Server) run(ctx context.Context, acct *account, prog string, args ...string) (string, error) {
	return s.runIn(ctx, acct, s.opts.Dir, prog, args...)
}

func (s *Server) runIn(ctx context.Context, acct *account, dir, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = dir
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
// explained there.
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

// dsnFor is the superuser's DSN for a port and password.
func dsnFor(port int, password, database string) string {
	u := "postgres"
	if password != "" {
		u = "postgres:" + password // newSecret's alphabet needs no escaping
	}
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable&connect_timeout=10", u, port, database)
}

// ping connects once to the server's postgres database.
func ping(ctx context.Context, port int, password string) error {
	if port == 0 {
		return errors.New("no port known")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsnFor(port, password, "postgres"))
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// isAuthError: the server answered but refused the login; waiting does not
// change that.
func isAuthError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000")
}

// errDied says the server process went away while we waited for it.
var errDied = errors.New("server process exited")

// waitReady polls until the server accepts a connection, timeout passes,
// it refuses the login, or (if given) alive says the server process is gone.
func waitReady(ctx context.Context, port int, password string, timeout time.Duration, alive func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ping(ctx, port, password)
		if err == nil || isAuthError(err) {
			return err
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
