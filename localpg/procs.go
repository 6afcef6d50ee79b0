package localpg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// postmaster is what postmaster.pid says about a server.
type postmaster struct {
	pid    int
	port   int
	socket string // first socket directory, "" if none
	shmID  int    // System V shared memory id of the main segment
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
	if len(lines) >= 5 {
		pm.socket = lines[4]
	}
	if len(lines) >= 7 {
		// "key id", both right-aligned in fixed-width fields.
		if f := strings.Fields(lines[6]); len(f) == 2 {
			pm.shmID, _ = strconv.Atoi(f[1])
		}
	}
	return pm, true
}

func (pm postmaster) alive() bool { return processAlive(pm.pid) }

// processAlive reports whether the process exists and is not a zombie: a
// killed postmaster is reparented to init, and some inits reap slowly.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
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

// serverPrograms are the process names of PostgreSQL programs that work
// inside a data directory.
var serverPrograms = []string{"postgres", "postmaster", "initdb"}

// isServerProgram reports whether pid runs one of serverPrograms.
func isServerProgram(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && slices.Contains(serverPrograms, strings.TrimSpace(string(comm)))
}

// processesUnder lists the live PostgreSQL processes (postmasters, their
// children, initdb) whose working directory is dir or below it, including
// those whose directory has been deleted. Processes /proc does not show us
// (another user's, when we are not root) cannot be ours.
func processesUnder(dir string) []int {
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if !isServerProgram(pid) {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err != nil {
			continue
		}
		cwd = strings.TrimSuffix(cwd, " (deleted)")
		if within(cwd, dir) && processAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Processes lists the PostgreSQL processes (postmaster, backends, initdb)
// working under Dir, a deleted data directory included: after Destroy, or
// after Stop, there are none.
func (s *Server) Processes() []int { return processesUnder(s.opts.Dir) }

// killProcesses kills every PostgreSQL process working under dir and waits
// until they are gone. It is for servers whose data is being discarded (or
// is gone already), so there is nothing to shut down cleanly.
func (s *Server) killProcesses(ctx context.Context, dir, why string) error {
	pids := processesUnder(dir)
	if len(pids) == 0 {
		return nil
	}
	s.log.Warn("killing PostgreSQL processes left in "+dir, "why", why, "pids", pids)
	// A killed process stops showing its working directory before it has
	// finished exiting, so processesUnder alone would call it gone while it
	// still runs: each killed pid is waited for by itself, and each round
	// also catches any process started under dir since the last.
	killed := map[int]bool{}
	deadline := time.Now().Add(startTimeout)
	for {
		for _, pid := range pids {
			if !killed[pid] {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				killed[pid] = true
			}
		}
		var left []int
		for pid := range killed {
			// A pid whose program is no longer PostgreSQL's has exited and
			// been reused: nothing of ours is left to wait for.
			if processAlive(pid) && isServerProgram(pid) {
				left = append(left, pid)
			}
		}
		pids = processesUnder(dir)
		if len(left) == 0 && len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			left = append(left, pids...)
			slices.Sort(left)
			return fmt.Errorf("PostgreSQL processes %v under %s survive SIGKILL after %s", slices.Compact(left), dir, startTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
