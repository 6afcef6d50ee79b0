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
