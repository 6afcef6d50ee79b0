// Package localpg runs a PostgreSQL server that votr manages itself: it
// creates the cluster with initdb from the binaries on the machine, configures
// it for logical replication, starts it on a loopback port, and stops and
// removes it on demand, whatever state an interrupted earlier run left.
//
// Layout under Options.Dir:
//
//	data/             the cluster (PGDATA); votr's settings live in
//	                  data/votr.conf, included from postgresql.conf and
//	                  rewritten at every start
//	data/votr.secret  the superuser's password (mode 0600), see Security
//	data.new/         a cluster being created; never started, and removed by
//	                  the next run if creation was interrupted
//	server.log        the server's log
//	socket/           the Unix socket directory (mode 0700; unused when its
//	                  path is too long for a socket)
//	port              the TCP port the server was given, kept across
//	                  restarts; written once a cluster exists, so a port file
//	                  without data/ means the data directory was deleted
//
// Lifecycle: a cluster is made in data.new/ (initdb, votr's settings, the
// secret) and renamed to data/ only when complete, so data/ is either whole
// or absent. Every start passes port, listen address and socket directory on
// the postgres command line and rewrites votr.conf (and the include of it),
// so no start can bring the server up with other settings; a start that fails
// stops what it started. A server found running is checked against those
// settings and restarted if it was started with others. Destroy removes the
// server in any state: it stops or kills every PostgreSQL process whose
// working directory lies under Dir, including one whose data directory was
// deleted under it.
//
// Security: the superuser "postgres" logs in over TCP (127.0.0.1 only) with a
// SCRAM password generated when the cluster is made and kept in
// data/votr.secret (0600); DSN carries it, and nothing in this package prints
// it. Without the password only the Unix socket lets one in (trust), and its
// directory, like Dir itself, can be entered by the server's OS user only
// (and root).
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
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Options says where a managed server lives and how to run it.
type Options struct {
	// Dir holds everything of this server (see the package doc).
	Dir string
	// BinDir holds initdb, pg_ctl and postgres; empty means the binaries
	// found by FindBinDir for a new cluster, and those of the cluster's own
	// major version (PG_VERSION) for an existing one.
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

const (
	settingsFile = "votr.conf"
	secretFile   = "votr.secret"
	includeLine  = "include '" + settingsFile + "'"
	// maxSocketPath is the room in sockaddr_un.sun_path (107 bytes plus NUL
	// on Linux); PostgreSQL refuses longer socket paths.
	maxSocketPath = 107
	startTimeout  = 60 * time.Second
	// destroyStopWait bounds Destroy's clean shutdown.
	destroyStopWait = 15 * time.Second
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

func (s *Server) dataDir() string    { return filepath.Join(s.opts.Dir, "data") }
func (s *Server) newDataDir() string { return filepath.Join(s.opts.Dir, "data.new") }
func (s *Server) logFile() string    { return filepath.Join(s.opts.Dir, "server.log") }
func (s *Server) socketDir() string  { return filepath.Join(s.opts.Dir, "socket") }
func (s *Server) portFile() string   { return filepath.Join(s.opts.Dir, "port") }
func (s *Server) pidFile() string    { return filepath.Join(s.dataDir(), "postmaster.pid") }

// Dir is the directory that holds everything of this server.
func (s *Server) Dir() string { return s.opts.Dir }

// Exists reports whether the cluster has been created. Creation ends with
// the rename of a complete cluster into data/, so this means complete.
func (s *Server) Exists() bool {
	_, err := os.Stat(filepath.Join(s.dataDir(), "PG_VERSION"))
	return err == nil
}

// DataLost reports whether a cluster was made in Dir and its data directory
// has since disappeared (deleted outside votr): the next Start makes a new,
// empty cluster, and whatever the old one held is gone. Callers that know
// what was there say so before starting.
func (s *Server) DataLost() bool {
	if s.Exists() {
		return false
	}
	_, err := os.Stat(s.portFile())
	return err == nil
}

// ErrPortInUse is the error of a Start whose explicit port (Options.Port)
// another program listens on: nothing was changed.
var ErrPortInUse = errors.New("port in use by another program")

// PortInUse reports the port a stopped server would start on (the explicit
// or stored one) and whether another program now listens on it: Start
// would move it to a free port (or, with an explicit port, fail). It
// changes nothing, so read-only commands ask it before they start a server.
// A running server, or one without a port yet, is reported as not in use.
func (s *Server) PortInUse(ctx context.Context) (port int, inUse bool) {
	s.mu.Lock()
	port = s.wantedPort()
	s.mu.Unlock()
	if port == 0 || s.Running(ctx) {
		return port, false
	}
	return port, !portFree(port)
}

// Port returns the server's TCP port: the one its running postmaster
// recorded in postmaster.pid, else the one it was last given, else the
// stored one, else Options.Port (0 if none is known yet). Running and DSN
// use the same answer, so they never disagree about which server they mean.
func (s *Server) Port() int {
	if pm, ok := s.readPidFile(); ok && pm.port != 0 && pm.alive() && pm.isOurs(s.dataDir()) {
		return pm.port
	}
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
// superuser over loopback TCP, password included: treat it as a secret.
func (s *Server) DSN(database string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", s.userinfo(), s.Port(), url.PathEscape(database))
}

// URL is the server's connect URL without a database, in the form a
// topology's `connect:` takes; it holds the password like DSN.
func (s *Server) URL() string {
	return fmt.Sprintf("postgresql://%s@127.0.0.1:%d/?sslmode=disable", s.userinfo(), s.Port())
}

// ConnString is a keyword/value connection string for database (as
// CREATE SUBSCRIPTION takes), password included.
func (s *Server) ConnString(database string) string {
	cs := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s", s.Port(), quoteConnValue(database))
	if pw := s.secret(); pw != "" {
		cs += " password=" + quoteConnValue(pw)
	}
	return cs
}

func (s *Server) userinfo() string {
	if pw := s.secret(); pw != "" {
		return url.UserPassword("postgres", pw).String()
	}
	return "postgres"
}

// Running reports whether the postmaster is alive and accepts connections.
func (s *Server) Running(ctx context.Context) bool {
	pm, ok := s.readPidFile()
	if !ok || !pm.alive() || !pm.isOurs(s.dataDir()) {
		return false
	}
	return ping(ctx, pm.port, s.secret()) == nil
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
// server that is already running with votr's settings (restarting one that
// runs with others), copes with a stale postmaster.pid, and returns once the
// server accepts connections.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	bin, acct, err := s.prepare(ctx)
	if err != nil {
		return err
	}
	reused, err := s.reuseRunning(ctx)
	if err != nil {
		return err
	}
	if !reused {
		if err := s.startServer(ctx, bin, acct); err != nil {
			return err
		}
	}
	return s.ensureAuth(ctx, acct)
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

// Destroy removes the server and all its data, whatever state it is in:
// running (on any port), crash-looping, half-made, with a stale pid file, or
// with a postmaster still running on a deleted data directory. A clean
// shutdown is tried first; whatever PostgreSQL process is left under Dir is
// killed, and nothing is deleted while one still runs.
func (s *Server) Destroy(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// The data is about to go: a server that does not shut down promptly
	// (hung, stopped, crash-looping) is killed rather than waited for.
	if err := s.stopWithin(ctx, "fast", destroyStopWait); err != nil {
		s.log.Warn("fast shutdown failed; killing the server's processes", "err", err)
	}
	if err := s.killProcesses(ctx, s.opts.Dir, "destroy"); err != nil {
		// Never delete the files of a server that may still run.
		return fmt.Errorf("destroy %s: %w", s.opts.Dir, err)
	}
	if err := os.RemoveAll(s.opts.Dir); err != nil {
		return fmt.Errorf("destroy %s: %w", s.opts.Dir, err)
	}
	s.port = 0
	s.log.Info("destroyed PostgreSQL server")
	return nil
}
