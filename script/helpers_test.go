package script

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// votrScript is the project's own merge script, which these tests drive.
const votrScript = "../scripts/votr.ts"

// compileSource compiles TypeScript source written to a file named name.
func compileSource(t testing.TB, name, src string) *Program {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := Compile(path)
	if err != nil {
		t.Fatalf("compile %s: %v", name, err)
	}
	return p
}

// hostFor compiles src and loads it with the given deadline.
func hostFor(t testing.TB, src string, timeout time.Duration) *Host {
	t.Helper()
	h, err := NewHost(compileSource(t, "merge.ts", src), timeout)
	if err != nil {
		t.Fatalf("NewHost: %v", err)
	}
	return h
}

// votrHost loads scripts/votr.ts. The deadline is generous: these tests
// check results, and a loaded test machine must not turn into a timeout.
func votrHost(t testing.TB) *Host {
	t.Helper()
	p, err := Compile(votrScript)
	if err != nil {
		t.Fatalf("compile %s: %v", votrScript, err)
	}
	h, err := NewHost(p, 30*time.Second)
	if err != nil {
		t.Fatalf("load %s: %v", votrScript, err)
	}
	return h
}

func jsonNumber(s string) json.Number { return json.Number(s) }
