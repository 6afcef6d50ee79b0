package localpg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// prepare resolves the binaries and the account, creates the layout with the
// right owners, clears what an interrupted creation left, and creates the
// cluster if it does not exist.
func (s *Server) prepare(ctx context.Context) (bin string, acct *account, err error) {
	if s.opts.Dir == "" {
		return "", nil, errors.New("localpg: Options.Dir is empty: say where the server's data goes")
	}
	if acct, err = serverAccount(); err != nil {
		return "", nil, err
	}
	if err := s.makeDirs(acct); err != nil {
		return "", nil, err
	}
	if err := s.removeInterruptedCreation(ctx); err != nil {
		return "", nil, err
	}
	if s.Exists() {
		if bin, err = s.clusterBinDir(); err != nil {
			return "", nil, err
		}
		if !acct.owns(s.dataDir()) {
			// A data directory copied or restored by root: hand it back.
			s.log.Info("giving data directory to the server user", "user", acct.name)
			if err := acct.chownTree(s.dataDir()); err != nil {
				return "", nil, fmt.Errorf("chown %s: %w", s.dataDir(), err)
			}
		}
		return bin, acct, nil
	}
	if s.DataLost() {
		s.log.Warn("the data directory was deleted outside votr: creating a new, empty cluster; the data of the old one is lost",
			"data", s.dataDir())
	}
	// A postmaster may still run on the deleted directory, holding the port
	// and serving data nobody can reach any more.
	if err := s.killProcesses(ctx, s.dataDir(), "its data directory was deleted"); err != nil {
		return "", nil, err
	}
	// What is left of a data directory whose removal was cut short (a
	// destroy killed midway) is no cluster once PG_VERSION has gone, and
	// would stop the new one's move into place.
	if _, err := os.Stat(s.dataDir()); err == nil {
		s.log.Warn("removing what is left of a data directory that is no cluster (PG_VERSION is gone; a destroy was interrupted?)", "data", s.dataDir())
		if err := os.RemoveAll(s.dataDir()); err != nil {
			return "", nil, fmt.Errorf("remove the remains of %s: %w", s.dataDir(), err)
		}
	}
	if bin, err = s.binDir(); err != nil {
		return "", nil, err
	}
	return bin, acct, s.create(ctx, bin, acct)
}

// removeInterruptedCreation removes data.new/ and stops what may still write
// into it (an initdb whose votr was killed), and the password file given to
// that initdb.
func (s *Server) removeInterruptedCreation(ctx context.Context) error {
	if err := os.Remove(s.initdbPasswordFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", s.initdbPasswordFile(), err)
	}
	if _, err := os.Stat(s.newDataDir()); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	s.log.Warn("removing an incomplete cluster left by an interrupted creation", "dir", s.newDataDir())
	if err := s.killProcesses(ctx, s.newDataDir(), "creation was interrupted"); err != nil {
		return err
	}
	if err := os.RemoveAll(s.newDataDir()); err != nil {
		return fmt.Errorf("remove incomplete cluster %s: %w", s.newDataDir(), err)
	}
	return nil
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
	// Only the server's user may reach the socket: it trusts whoever does.
	if err := os.Chmod(s.socketDir(), 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", s.socketDir(), err)
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

// initdbPasswordFile hands the new password to initdb (which reads it from
// a file only); it exists only while initdb runs.
func (s *Server) initdbPasswordFile() string { return filepath.Join(s.opts.Dir, ".initdb-password") }

// create makes the cluster in data.new/ (initdb with the password, votr's
// settings, the include, pg_hba.conf, the secret), then renames it to data/
// and records the port. A kill at any point leaves either no data/ or a
// complete one.
func (s *Server) create(ctx context.Context, bin string, acct *account) error {
	start := time.Now()
	tmp := s.newDataDir()
	secret, err := newSecret()
	if err != nil {
		return err
	}
	pwfile := s.initdbPasswordFile()
	if err := writeOwned(pwfile, []byte(secret+"\n"), acct); err != nil {
		return err
	}
	defer os.Remove(pwfile)

	if err := s.initdb(ctx, bin, acct, tmp, pwfile); err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	port, err := s.choosePort(false)
	if err != nil {
		return err
	}
	if err := s.configure(tmp, port, acct); err != nil {
		return err
	}
	if err := writeHBA(tmp, acct); err != nil {
		return err
	}
	if err := writeOwned(filepath.Join(tmp, secretFile), []byte(secret+"\n"), acct); err != nil {
		return err
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.dataDir()); err != nil {
		return fmt.Errorf("move the new cluster into place: %w", err)
	}
	if err := syncDir(s.opts.Dir); err != nil {
		return err
	}
	if err := s.storePort(port); err != nil {
		return err
	}
	s.port = port
	s.log.Info("created PostgreSQL cluster", "port", port, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// initdb runs initdb into dir: the superuser's password comes from pwfile,
// TCP logins need it (SCRAM), the Unix socket trusts (its directory is the
// server user's alone).
func (s *Server) initdb(ctx context.Context, bin string, acct *account, dir, pwfile string) error {
	args := []string{"-D", dir, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
		"--pwfile=" + pwfile, "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"}
	out, err := s.initdbIn(ctx, bin, acct, dir, args)
	if err != nil && ctx.Err() == nil && localeMissing(out) {
		// Systems without the C.UTF-8 locale: the plain C locale with UTF8
		// encoding behaves the same for votr.
		s.log.Warn("initdb: the C.UTF-8 locale is not available on this system; using the C locale (UTF8 encoding), which behaves the same for votr",
			"initdb", lastLines(out, 1))
		args[len(args)-2] = "--locale=C"
		out, err = s.initdbIn(ctx, bin, acct, dir, args)
	}
	if err != nil {
		return fmt.Errorf("initdb %s: %w: %s", dir, err, lastLines(out, 15))
	}
	return nil
}

// initdbIn runs initdb in an empty dir of its own, which is also its
// working directory: an initdb orphaned by a kill is then found (and
// stopped) by the next run, which looks for processes working under data.new.
func (s *Server) initdbIn(ctx context.Context, bin string, acct *account, dir string, args []string) (string, error) {
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("remove incomplete cluster %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	if err := acct.chown(dir); err != nil {
		return "", fmt.Errorf("chown %s: %w", dir, err)
	}
	return s.runIn(ctx, acct, dir, filepath.Join(bin, "initdb"), args...)
}

// localeMissing recognises initdb's error for a locale the system lacks.
// Only the error line counts: initdb's banner names the locale too.
func localeMissing(out string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "error:") &&
			(strings.Contains(line, "invalid locale name") || strings.Contains(line, "invalid locale settings")) {
			return true
		}
	}
	return false
}

// writeOwned writes a private file (0600) and gives it to the account.
func writeOwned(path string, b []byte, acct *account) error {
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// WriteFile keeps the mode of a file that was already there.
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if err := acct.chown(path); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

// syncDir makes a rename or a new file in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
