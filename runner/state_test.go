package runner

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/votr-dev/votr/internal/testlog"
)

// Each save keeps the previous state as a backup; a damaged state file
// is refused with the way back through that backup, and the damaged file
// never overwrites a good backup.
func TestStateBackup(t *testing.T) {
	dir := t.TempDir()
	r := newRunner(t, dir, &testlog.Buffer{})

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
	r := newRunner(t, dir, &testlog.Buffer{})
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

// plan and check take the read lock before they look at any server: beside
// an apply or destroy that holds the lock they refuse, naming it, and start,
// create or change nothing.
func TestReadOnlyCommandsTakeTheLock(t *testing.T) {
	dir := serverDir(t)
	stateDir := filepath.Join(dir, "state")
	topo := topology(t, dir, 8, region{connect: "local"}, region{id: 1, connect: "local"})
	holder := newRunner(t, stateDir, &testlog.Buffer{})
	lk, err := holder.acquireLock()
	if err != nil {
		t.Fatal(err)
	}
	defer lk.release()
	r := newRunner(t, stateDir, &testlog.Buffer{}, func(o *Options) { o.Command = "votr plan (test)" })
	ctx := ctxT(t)
	for name, cmd := range map[string]func() error{
		"plan":  func() error { _, err := r.Plan(ctx, topo); return err },
		"check": func() error { _, err := r.Check(ctx, topo); return err },
	} {
		err := cmd()
		if err == nil || !strings.Contains(err.Error(), "votr apply (test)") || !strings.Contains(err.Error(), "is changing this deployment; run again once it is done") {
			t.Errorf("%s beside an apply: want a refusal naming the apply, got %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(stateDir, "servers")); !os.IsNotExist(err) {
		t.Errorf("a refused read created a server directory: %v", err)
	}
}

// A destroy removes the lock file while it holds it. A command that opened
// the file just before gets a lock on the removed file once the destroy
// ends, which guards nothing: stillAt tells it so (acquireLock and
// readLock then start over), and the lock it takes instead is refused
// beside whoever holds the new file.
func TestLockFileRemovedMeanwhile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	destroy := newRunner(t, dir, &testlog.Buffer{}, func(o *Options) { o.Command = "votr destroy (test)" })
	lk, err := destroy.acquireLock()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "apply.lock")
	early, err := os.Open(path) // opened before the destroy removes it
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	lk.remove()
	lk.release()

	next := newRunner(t, dir, &testlog.Buffer{}, func(o *Options) { o.Command = "votr apply (next)" })
	nlk, err := next.acquireLock()
	if err != nil {
		t.Fatalf("apply after the destroy: %v", err)
	}
	defer nlk.release()
	if err := syscall.Flock(int(early.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("flock on the removed file: %v", err)
	}
	if stillAt(early, path) {
		t.Fatal("stillAt says a lock on the removed file guards the state dir: two holders at once")
	}
	late := newRunner(t, dir, &testlog.Buffer{})
	if _, err := late.acquireLock(); err == nil || !strings.Contains(err.Error(), "votr apply (next)") {
		t.Errorf("apply beside the new holder: want a refusal naming it, got %v", err)
	}
	if _, err := late.readLock(); err == nil || !strings.Contains(err.Error(), "votr apply (next)") {
		t.Errorf("plan beside the new holder: want a refusal naming it, got %v", err)
	}
}
