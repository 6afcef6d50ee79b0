package localpg

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// serverUser is the OS account that runs PostgreSQL when votr runs as root:
// initdb, pg_ctl and postgres all refuse root, and Debian's package creates
// this account.
const serverUser = "postgres"

// account is the OS identity the server programs run as. A nil *account
// means "as ourselves" (votr is not root).
type account struct {
	name   string
	uid    int
	gid    int
	groups []int // all group ids, primary included
}

// serverAccount returns who runs the server: nobody special when we are not
// root, else the postgres user, which must exist.
func serverAccount() (*account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(serverUser)
	if err != nil {
		return nil, fmt.Errorf("running as root: PostgreSQL refuses to run as root, so votr runs it as the OS user %q, "+
			"but that user does not exist (%v); install the server package, which creates it "+
			"(`apt-get install -y postgresql`), or run votr as an unprivileged user", serverUser, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("user %q has a non-numeric uid/gid: %w", serverUser, err)
	}
	acct := &account{name: serverUser, uid: uid, gid: gid, groups: []int{gid}}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.Atoi(s); err == nil && g != gid {
				acct.groups = append(acct.groups, g)
			}
		}
	}
	return acct, nil
}

// credential makes a child process run as the account.
func (a *account) credential() *syscall.SysProcAttr {
	if a == nil {
		return nil
	}
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(a.uid), Gid: uint32(a.gid)}}
}

// canTraverse reports whether the account may pass through a directory with
// the given mode and owner (the execute bit that applies to it).
func (a *account) canTraverse(mode fs.FileMode, uid, gid int) bool {
	switch {
	case uid == a.uid:
		return mode&0o100 != 0
	case a.inGroup(gid):
		return mode&0o010 != 0
	default:
		return mode&0o001 != 0
	}
}

func (a *account) inGroup(gid int) bool {
	for _, g := range a.groups {
		if g == gid {
			return true
		}
	}
	return false
}

// ensureReachable makes sure the account can walk from / down to dir.
//
// Policy: votr never widens permissions of directories outside the working
// directory tree (such as /root or a home directory) on its own, because that
// would silently expose them. Ancestors inside the working directory tree
// (the project checkout the user chose to run votr in) get o+x, which lets
// the server user pass through without being able to list them. Anything
// else is an error that names the directory and both ways out.
func (a *account) ensureReachable(dir, cwd string, logf func(msg string, args ...any)) error {
	if a == nil {
		return nil
	}
	var blocked []string
	for _, anc := range ancestors(dir) {
		fi, err := os.Stat(anc)
		if errors.Is(err, fs.ErrNotExist) {
			break // the rest is created by us, traversable
		}
		if err != nil {
			return fmt.Errorf("check %s: %w", anc, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || a.canTraverse(fi.Mode(), int(st.Uid), int(st.Gid)) {
			continue
		}
		if within(anc, cwd) {
			if err := os.Chmod(anc, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("let user %s traverse %s: %w", a.name, anc, err)
			}
			logf("granted o+x so the PostgreSQL server user can reach its data", "dir", anc, "user", a.name)
			continue
		}
		blocked = append(blocked, anc)
	}
	if len(blocked) > 0 {
		return fmt.Errorf("the PostgreSQL server runs as OS user %q (it refuses root) and cannot reach %s: "+
			"%s not traversable by that user; either run `chmod o+x %s` or choose a state directory "+
			"that user can reach (for example one under /var/tmp)",
			a.name, dir, strings.Join(blocked, ", ")+pluralVerb(len(blocked)), strings.Join(blocked, " "))
	}
	return nil
}

func pluralVerb(n int) string {
	if n == 1 {
		return " is"
	}
	return " are"
}

// ancestors lists the directories above dir, from / down (dir excluded).
func ancestors(dir string) []string {
	var out []string
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		out = append([]string{p}, out...)
		if p == filepath.Dir(p) {
			return out
		}
	}
}

// within reports whether p is root or below it.
func within(p, root string) bool {
	if root == "" {
		return false
	}
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// chownTree gives everything under dir to the account (no-op when not root).
func (a *account) chownTree(dir string) error {
	if a == nil {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, a.uid, a.gid)
	})
}

// chown gives one path to the account (no-op when not root).
func (a *account) chown(p string) error {
	if a == nil {
		return nil
	}
	return os.Lchown(p, a.uid, a.gid)
}

// owns reports whether the account owns path (always true when not root).
func (a *account) owns(p string) bool {
	if a == nil {
		return true
	}
	fi, err := os.Stat(p)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == a.uid
}

// Reachable reports whether a server with its data in dir could run: always
// when votr is not root; as root, when the server user can traverse every
// existing directory above dir, or votr may open it (it lies in the working
// directory tree, see ensureReachable). Callers use it to put a server's
// data elsewhere rather than fail, e.g. for a checkout under /root.
func Reachable(dir string) bool {
	a, err := serverAccount()
	if err != nil || a == nil {
		return err == nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	cwd, _ := os.Getwd()
	for _, anc := range ancestors(abs) {
		fi, err := os.Stat(anc)
		if errors.Is(err, fs.ErrNotExist) {
			return true
		}
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok && !a.canTraverse(fi.Mode(), int(st.Uid), int(st.Gid)) && !within(anc, cwd) {
			return false
		}
	}
	return true
}
