package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Each save keeps the previous state as a backup; a damaged state file
// is refused with the way back through that backup, and the damaged file
// never overwrites a good backup.
func TestStateBackup(t *testing.T) {
	dir := t.TempDir()
	r := newRunner(t, dir, &syncBuffer{})

	first := &State{}
	first.addServer("local", "/first")
	if err := r.saveState(first); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.backupPath()); !os.IsNotExist(err) {
		t.Fatalf("a first save has nothing to back up, yet %s: %v", r.backupPath(), err)
	}
	second := &State{}
	second.addServer("local", "/second")
	if err := r.saveState(second); err != nil {
		t.Fatal(err)
	}
	bak, err := os.ReadFile(r.backupPath())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(bak), "/first") || strings.Contains(string(bak), "/second") {
		t.Fatalf("backup is not the state before the last save:\n%s", bak)
	}

	if err := os.WriteFile(r.statePath(), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = r.loadState()
	if err == nil || !strings.Contains(err.Error(), r.backupPath()) {
		t.Fatalf("a corrupt state should name the backup to restore, got %v", err)
	}
	third := &State{}
	third.addServer("local", "/third")
	if err := r.saveState(third); err != nil {
		t.Fatal(err)
	}
	bak, _ = os.ReadFile(r.backupPath())
	if !strings.Contains(string(bak), "/first") {
		t.Fatalf("a damaged state replaced the good backup:\n%s", bak)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".state-*")); len(leftovers) > 0 {
		t.Fatalf("temporary files left behind: %v", leftovers)
	}

	if err := r.removeState(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{r.statePath(), r.backupPath()} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after removeState: %v", p, err)
		}
	}
}

// Read-only commands share the lock with each other, but not with a
// command that changes the deployment, in either order; without a state
// dir a read takes nothing and creates nothing.
func TestReadLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	r := newRunner(t, dir, &syncBuffer{})
	release, err := r.readLock()
	if err != nil {
		t.Fatalf("read lock without a state dir: %v", err)
	}
	release()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("a read lock created the state dir: %v", err)
	}

	lk, err := r.acquireLock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.readLock(); err == nil || !strings.Contains(err.Error(), "votr apply (test)") {
		t.Fatalf("plan beside an apply: want a refusal naming the apply, got %v", err)
	}
	// An apply that converged and now runs shares the lock: plan and
	// check read beside it, another apply is told who runs.
	if err := lk.share(); err != nil {
		t.Fatal(err)
	}
	rr, err := r.readLock()
	if err != nil {
		t.Fatalf("plan beside a running apply: %v", err)
	}
	if _, err := r.acquireLock(); err == nil || !strings.Contains(err.Error(), "votr apply (test)") {
		t.Fatalf("apply beside a running apply: want a refusal naming it, got %v", err)
	}
	rr()
	lk.release()

	r1, err := r.readLock()
	if err != nil {
		t.Fatal(err)
	}
	r2, err := r.readLock()
	if err != nil {
		t.Fatalf("two reads should share the lock: %v", err)
	}
	if _, err := r.acquireLock(); err == nil || !strings.Contains(err.Error(), "plan or check") {
		t.Fatalf("apply beside a plan: want a refusal naming the reader, got %v", err)
	}
	r1()
	r2()
	lk, err = r.acquireLock()
	if err != nil {
		t.Fatalf("apply after the reads ended: %v", err)
	}
	lk.release()
}
