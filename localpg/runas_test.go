package localpg

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEnsureReachable checks the policy for a server user that cannot pass
// through the data directory's ancestors: fix inside the working tree, refuse
// (saying what to do) outside it. A made-up uid stands for the postgres user
// so the test means the same as root and as anyone else.
func TestEnsureReachable(t *testing.T) {
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	acct := &account{name: "postgres", uid: 99999, gid: 99999, groups: []int{99999}}
	mk := func(p string, mode os.FileMode) string {
		p = filepath.Join(base, p)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cwd := mk("work", 0o700)
	inside := mk("work/private", 0o750)
	outside := mk("home", 0o700)
	open := mk("open", 0o755)

	tests := []struct {
		name    string
		dir     string
		wantErr string
		fixed   []string // directories that must have gained o+x
	}{
		{"reachable already", filepath.Join(open, "pg"), "", nil},
		{"inside the working tree", filepath.Join(inside, "pg"), "", []string{cwd, inside}},
		{"outside the working tree", filepath.Join(outside, "pg"), "chmod o+x " + outside, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := acct.ensureReachable(tc.dir, cwd, func(string, ...any) {})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "choose a state directory") {
					t.Fatalf("err = %v, want it to contain %q and the state-dir alternative", err, tc.wantErr)
				}
				if fi, _ := os.Stat(outside); fi.Mode().Perm() != 0o700 {
					t.Fatalf("%s was changed to %v", outside, fi.Mode().Perm())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range tc.fixed {
				if fi, _ := os.Stat(d); fi.Mode().Perm()&0o001 == 0 {
					t.Errorf("%s not made traversable: %v", d, fi.Mode().Perm())
				}
			}
		})
	}
}

func TestWithin(t *testing.T) {
	tests := []struct {
		p, root string
		want    bool
	}{
		{"/a/b", "/a", true},
		{"/a", "/a", true},
		{"/ab", "/a", false},
		{"/", "/a", false},
		{"/a/..b", "/a", true},
		{"/x", "", false},
	}
	for _, tc := range tests {
		if got := within(tc.p, tc.root); got != tc.want {
			t.Errorf("within(%q, %q) = %v, want %v", tc.p, tc.root, got, tc.want)
		}
	}
}
