package localpg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
