package localpg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// serverBinaries are the programs a managed server needs; a directory counts
// as a PostgreSQL bin directory only if it has all of them.
var serverBinaries = []string{"initdb", "pg_ctl", "postgres"}

// installHint is the end of every "binaries not found" error: the user needs
// the action, not only the diagnosis.
const installHint = "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; " +
	"install them with `sudo apt-get install -y postgresql` (Debian/Ubuntu) " +
	"or set VOTR_PG_BIN to their directory"

// FindBinDir returns the directory holding initdb, pg_ctl and postgres.
//
// The search order is: explicit (normally $VOTR_PG_BIN), the directory of
// initdb on $PATH (symlinks resolved, so Debian's convenience links lead to
// the versioned directory), `pg_config --bindir`, and the newest
// /usr/lib/postgresql/*/bin. Debian keeps the server programs off $PATH, which
// is why the later steps exist.
func FindBinDir(explicit string) (string, error) {
	if explicit != "" {
		dir, err := filepath.Abs(explicit)
		if err != nil {
			return "", fmt.Errorf("VOTR_PG_BIN %q: %w", explicit, err)
		}
		if missing := missingBinaries(dir); len(missing) > 0 {
			return "", fmt.Errorf("VOTR_PG_BIN %s lacks %s: %s", dir, strings.Join(missing, ", "), installHint)
		}
		return dir, nil
	}
	for _, dir := range candidateBinDirs() {
		if len(missingBinaries(dir)) == 0 {
			return dir, nil
		}
	}
	return "", errors.New(installHint)
}

// candidateBinDirs lists the places to look, best first; duplicates and
// directories that do not exist are harmless.
func candidateBinDirs() []string {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
		dirs = append(dirs, filepath.Dir(p))
	}
	if pgConfig, err := exec.LookPath("pg_config"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, pgConfig, "--bindir").Output()
		cancel()
		if err == nil {
			if d := strings.TrimSpace(string(out)); d != "" {
				dirs = append(dirs, d)
			}
		}
	}
	return append(dirs, debianBinDirs()...)
}

// debianBinDirs returns /usr/lib/postgresql/<major>/bin, newest major first.
func debianBinDirs() []string {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(p string) float64 {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(p)), 64)
		if err != nil {
			return -1
		}
		return v
	}
	sort.Slice(matches, func(i, j int) bool { return version(matches[i]) > version(matches[j]) })
	return matches
}

// missingBinaries names the server programs dir lacks (or cannot execute).
func missingBinaries(dir string) []string {
	var missing []string
	for _, name := range serverBinaries {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	return missing
}

// binDir is where the programs for a new cluster come from.
func (s *Server) binDir() (string, error) {
	return FindBinDir(s.opts.BinDir)
}

// clusterBinDir returns the binaries of the major version the existing
// cluster was made with (its PG_VERSION): a server's data can only be run by
// its own major version, whatever else is installed. An explicit BinDir of
// another version is an error, as is no installed binaries of that version.
func (s *Server) clusterBinDir() (string, error) {
	b, err := os.ReadFile(filepath.Join(s.dataDir(), "PG_VERSION"))
	if err != nil {
		return "", fmt.Errorf("server %s: %w", s.opts.Dir, err)
	}
	major := strings.TrimSpace(string(b))
	candidates := candidateBinDirs()
	if s.opts.BinDir != "" {
		candidates = []string{s.opts.BinDir}
	}
	dir, err := binDirFor(major, candidates)
	if err != nil {
		return "", fmt.Errorf("server %s: %w", s.opts.Dir, err)
	}
	return dir, nil
}

// binDirFor returns the first candidate directory holding the server
// programs of major version major, or an error that says what was found
// instead and how to get the right ones.
func binDirFor(major string, candidates []string) (string, error) {
	var found []string
	seen := map[string]bool{}
	for _, dir := range candidates {
		if seen[dir] || len(missingBinaries(dir)) > 0 {
			continue
		}
		seen[dir] = true
		v, err := binMajor(dir)
		if err != nil {
			found = append(found, fmt.Sprintf("%s (%v)", dir, err))
			continue
		}
		if v == major {
			return dir, nil
		}
		found = append(found, fmt.Sprintf("%s (PostgreSQL %s)", dir, v))
	}
	msg := fmt.Sprintf("the cluster was made with PostgreSQL %s, and its server binaries are not installed", major)
	if len(found) > 0 {
		msg += "; found only " + strings.Join(found, ", ")
	}
	return "", fmt.Errorf("%s: install them (Debian/Ubuntu: `sudo apt-get install -y postgresql-%s`) and point VOTR_PG_BIN at their directory if they are not found, "+
		"or remove this server with `votr destroy` (its data is lost)", msg, major)
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)(?:\.(\d+))?`)

// binMajor asks dir's postgres for its major version ("15"; "9.6" before 10),
// the form PG_VERSION holds.
func binMajor(dir string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("postgres --version: %w", err)
	}
	m := versionRE.FindStringSubmatch(string(out))
	if m == nil {
		return "", fmt.Errorf("postgres --version says %q", strings.TrimSpace(string(out)))
	}
	if n, _ := strconv.Atoi(m[1]); n < 10 && m[2] != "" {
		return m[1] + "." + m[2], nil
	}
	return m[1], nil
}

// Binaries returns the directory of the server programs the next Start
// would run: those of the cluster's own major version when it exists, else
// those a new cluster is made with. Callers check it before promising to
// create or start a server, so a missing installation is named up front.
func (s *Server) Binaries() (string, error) {
	if s.Exists() {
		return s.clusterBinDir()
	}
	return s.binDir()
}
