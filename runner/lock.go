package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// lockInfo is written into the lock file by its holder, so that the next
// one can say who holds it.
type lockInfo struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	Command string    `json:"command"`
	Started time.Time `json:"started"`
}

// lock is a held <state dir>/apply.lock. The kernel releases a flock when
// its holder dies, so a killed apply never leaves a stale lock behind.
type lock struct {
	f *os.File
	// dir is the state dir when acquireLock created it, else "".
	dir string
}

// acquireLock takes the apply lock of the state dir without waiting.
func (r *Runner) acquireLock() (*lock, error) {
	var made string
	if _, err := os.Stat(r.opts.StateDir); errors.Is(err, os.ErrNotExist) {
		made = r.opts.StateDir
	}
	if err := os.MkdirAll(r.opts.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	path := filepath.Join(r.opts.StateDir, "apply.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("apply lock: %w", err)
	}
	retry, err := flockAt(f, path, syscall.LOCK_EX)
	if retry {
		return r.acquireLock()
	}
	if err != nil {
		defer f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("apply lock %s: %w", path, err)
		}
		shared := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB) == nil
		if shared {
			syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		}
		who, pid, cmd := holderOf(f)
		if shared && !alive(pid) {
			// Only shared holders, and the last writer is gone: read-only
			// commands, which never write who they are.
			return nil, fmt.Errorf("a votr plan or check is reading %s's deployment (it holds %s shared); run again once it is done", r.opts.StateDir, path)
		}
		hint := ""
		if pid > 0 && strings.HasPrefix(cmd, "votr apply") {
			hint = fmt.Sprintf(" (a running apply takes an edited topology without stopping: send it SIGHUP, `kill -HUP %d`)", pid)
		}
		return nil, fmt.Errorf("%s holds %s; wait for it or stop it%s", who, path, hint)
	}
	host, _ := os.Hostname()
	info, _ := json.Marshal(lockInfo{PID: os.Getpid(), Host: host, Command: r.opts.Command, Started: time.Now().UTC()})
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt(append(info, '\n'), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("apply lock %s: %w", path, err)
	}
	return &lock{f: f, dir: made}, nil
}

// holderOf describes the holder of a lock from what it wrote, with its pid
// and command (0 and "" when unknown). The holder writes right after it
// takes the lock, so an empty file is retried briefly.
func holderOf(f *os.File) (string, int, string) {
	var info lockInfo
	for range 20 {
		b := make([]byte, 4096)
		n, _ := f.ReadAt(b, 0)
		if n > 0 && json.Unmarshal(b[:n], &info) == nil {
			cmd := info.Command
			if cmd == "" {
				cmd = "votr apply"
			}
			return fmt.Sprintf("another %s (pid %d on host %s, started %s)", cmd, info.PID, info.Host, info.Started.Local().Format(time.RFC3339)), info.PID, cmd
		}
		time.Sleep(25 * time.Millisecond)
	}
	return "another votr apply", 0, ""
}

// alive reports whether process pid exists.
func alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) != syscall.ESRCH
}

// share turns the held lock shared: the deployment is converged and now only
// runs, so plan and check may read it beside this command, while another
// apply or destroy is still refused (and told who runs).
func (l *lock) share() error {
	if l == nil || l.f == nil {
		return nil
	}
	if err := syscall.Flock(int(l.f.Fd()), syscall.LOCK_SH); err != nil {
		return fmt.Errorf("apply lock: %w", err)
	}
	return nil
}

func (l *lock) release() {
	if l == nil || l.f == nil {
		return
	}
	// Who held it is no longer true: readers left holding it shared must
	// not be taken for this command.
	_ = l.f.Truncate(0)
	syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
}

// discard removes the lock file and the state dir, when acquireLock made
// the dir and nothing else was put in it since (a command that failed before
// it changed anything). Call it before release, still holding the lock: a
// command that opened the file meanwhile then finds it gone once it has the
// lock (flockAt) and takes the new one, where after the release it could
// lock the old file just before it is removed, beside a third command
// locking a new one.
func (l *lock) discard() {
	if l == nil || l.dir == "" {
		return
	}
	entries, err := os.ReadDir(l.dir)
	if err != nil || len(entries) != 1 || entries[0].Name() != "apply.lock" {
		return
	}
	_ = os.Remove(filepath.Join(l.dir, "apply.lock"))
	_ = os.Remove(l.dir)
}

// lockUntilDone takes the apply lock for a command. The returned release
// frees it and, unless *changed was set meanwhile, removes the state dir if
// taking the lock created it: a command that changed nothing (it failed or
// was refused first) leaves no trace.
func (r *Runner) lockUntilDone(changed *bool) (lk *lock, release func(), err error) {
	lk, err = r.acquireLock()
	if err != nil {
		return nil, nil, err
	}
	return lk, func() {
		if !*changed {
			lk.discard()
		}
		lk.release()
	}, nil
}

// readLock takes the lock of the state dir shared, for commands that only
// read (plan, check): any number of them run together, but never beside an
// apply or destroy that is changing the servers they read. Without a state
// dir there is nothing to guard and nothing is created.
func (r *Runner) readLock() (release func(), err error) {
	path := filepath.Join(r.opts.StateDir, "apply.lock")
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(r.opts.StateDir); errors.Is(serr, os.ErrNotExist) {
			return func() {}, nil
		}
		f, err = os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("apply lock: %w", err)
	}
	retry, err := flockAt(f, path, syscall.LOCK_SH)
	if retry {
		return r.readLock()
	}
	if err != nil {
		defer f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("apply lock %s: %w", path, err)
		}
		who, _, _ := holderOf(f)
		return nil, fmt.Errorf("%s holds %s and is changing this deployment; run again once it is done", who, path)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// flockAt locks the open lock file f, found at path, without waiting (how:
// LOCK_EX or LOCK_SH). A lock taken on a file that a destroy removed between
// the open and the flock guards nothing: flockAt then releases and closes f
// and reports retry, for the caller to open the file that is there now.
func flockAt(f *os.File, path string, how int) (retry bool, err error) {
	err = syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
	if err == nil && !stillAt(f, path) {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
		return true, nil
	}
	return false, err
}

// stillAt reports whether the open file f is still the file at path: a lock
// taken on a file that was removed (or replaced) meanwhile guards nothing.
func stillAt(f *os.File, path string) bool {
	held, err := f.Stat()
	if err != nil {
		return false
	}
	now, err := os.Stat(path)
	return err == nil && os.SameFile(held, now)
}

// remove deletes the held lock file and then the state dir if nothing else
// is left in it: a destroy that removed everything leaves no trace. It runs
// while the lock is held; a command that opened the file before it went
// finds out with stillAt and takes the new one.
func (l *lock) remove() {
	if l == nil || l.f == nil {
		return
	}
	path := l.f.Name()
	_ = os.Remove(path)
	_ = os.Remove(filepath.Dir(path))
}
