package localpg

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The settings logical replication needs, with room for many feeds. The
// slot/sender counts bound the number of feeds per server. They live in
// votr.conf, which postgresql.auto.conf overrides: ALTER SYSTEM on the
// server wins over them (and votr's checks then report what it changed).
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

// hbaMarker opens a pg_hba.conf that votr wrote; one without it (made by an
// older votr, which trusted TCP) is replaced once the password is set.
const hbaMarker = "# votr: managed server access rules"

// hbaRules: the Unix socket trusts (its directory is the server user's
// alone), TCP wants the SCRAM password, for sessions and replication alike.
const hbaRules = hbaMarker + `
# Written by votr. The socket directory can be entered by the server's OS
# user only; over TCP every role needs its password.
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
`

// startSettings are the settings every start passes on the postgres command
// line, where no configuration file can override them: the server can only
// come up where votr will look for it.
func (s *Server) startSettings(port int) map[string]string {
	return map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": s.socketPath(),
	}
}

// socketPath is the Unix socket directory to use, or "" (TCP only) when its
// path does not fit in a socket address or cannot be written as a list
// element.
func (s *Server) socketPath() string {
	sock := s.socketDir()
	if len(sock)+len("/.s.PGSQL.65535.lock") > maxSocketPath || strings.ContainsAny(sock, ",\"'\\") {
		return ""
	}
	return sock
}

// configure writes data/votr.conf into dataDir and makes sure
// postgresql.conf includes it: a cluster whose creation an older votr did
// not finish gets its include back here.
func (s *Server) configure(dataDir string, port int, acct *account) error {
	var b strings.Builder
	b.WriteString("# Written by votr at every start; edit postgresql.auto.conf (ALTER SYSTEM) instead.\n")
	b.WriteString("# listen_addresses, port and unix_socket_directories are also given on the command line.\n")
	st := s.startSettings(port)
	for _, k := range []string{"listen_addresses", "port", "unix_socket_directories"} {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(st[k], "'", "''"))
	}
	b.WriteString(replicationSettings)
	p := filepath.Join(dataDir, settingsFile)
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := acct.chown(p); err != nil {
		return fmt.Errorf("chown %s: %w", p, err)
	}

	conf := filepath.Join(dataDir, "postgresql.conf")
	old, err := os.ReadFile(conf)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("configure %s: %w: the cluster is incomplete (an initdb of an older votr was interrupted); "+
			"remove it with `votr destroy` (or delete %s) and run again", conf, err, s.opts.Dir)
	}
	if err != nil {
		return fmt.Errorf("configure %s: %w", conf, err)
	}
	for _, line := range strings.Split(string(old), "\n") {
		if strings.TrimSpace(line) == includeLine {
			return nil
		}
	}
	if dataDir == s.dataDir() {
		s.log.Warn("postgresql.conf did not include votr's settings (creation by an older votr was interrupted); adding the include", "file", conf)
	}
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("configure %s: %w", conf, err)
	}
	_, werr := fmt.Fprintf(f, "\n# votr: managed settings (rewritten at every start)\n%s\n", includeLine)
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("configure %s: %w", conf, err)
	}
	return nil
}

// writeHBA replaces dataDir/pg_hba.conf with votr's rules.
func writeHBA(dataDir string, acct *account) error {
	p := filepath.Join(dataDir, "pg_hba.conf")
	return writeOwned(p, []byte(hbaRules), acct)
}

// hbaIsVotrs reports whether pg_hba.conf was written by this votr.
func (s *Server) hbaIsVotrs() bool {
	b, err := os.ReadFile(filepath.Join(s.dataDir(), "pg_hba.conf"))
	return err == nil && bytes.HasPrefix(b, []byte(hbaMarker))
}

// choosePort returns the port to start on: Options.Port if set, else the
// stored one, else a fresh free one. A stored port that is now taken by
// another program is replaced; an explicit one is an error.
func (s *Server) choosePort(forceNew bool) (int, error) {
	port := s.opts.Port
	if port != 0 {
		if !portFree(port) {
			return 0, fmt.Errorf("start server %s: port %d on 127.0.0.1 is in use by another program (%w); "+
				"stop it or choose another port (or 0 to pick a free one)", s.opts.Dir, port, ErrPortInUse)
		}
		return port, nil
	}
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
	return port, nil
}

// wantedPort is the port a running server should be on: the explicit or
// stored one (0: any).
func (s *Server) wantedPort() int {
	if s.opts.Port != 0 {
		return s.opts.Port
	}
	return s.storedPort()
}

func (s *Server) storePort(port int) error {
	if err := os.WriteFile(s.portFile(), []byte(strconv.Itoa(port)+"\n"), 0o644); err != nil {
		return fmt.Errorf("store port: %w", err)
	}
	return nil
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
