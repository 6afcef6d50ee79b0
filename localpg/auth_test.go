package localpg_test

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/localpg"
)

// psqlAsOther runs psql as another OS user than the server's (nobody, when
// we are root), with a clean environment plus env, and returns its output
// and whether it succeeded.
func psqlAsOther(t *testing.T, env []string, args ...string) (string, bool) {
	t.Helper()
	psql := filepath.Join(binDir(t), "psql")
	argv := append([]string{"-X", "-w", "-At", "-c", "SELECT 'in as ' || current_user"}, args...)
	cmd := exec.CommandContext(testCtx(t), psql, argv...)
	if os.Geteuid() == 0 {
		cmd = exec.CommandContext(testCtx(t), "runuser", append([]string{"-u", "nobody", "--", psql}, argv...)...)
	}
	cmd.Dir = "/"
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// TestPasswordAuth: over TCP the superuser needs the generated password,
// which lives in a 0600 file; the Unix socket is out of other users' reach.
func TestPasswordAuth(t *testing.T) {
	s := pgtest.Start(t)
	secret := secretOf(t, s)
	fi, err := os.Stat(filepath.Join(s.Dir(), "data", "votr.secret"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	tcp := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port()), "-U", "postgres", "-d", "postgres"}
	tests := []struct {
		name   string
		env    []string
		args   []string
		wantOK bool
		want   string
	}{
		{"TCP without the password", nil, tcp, false, "password"},
		{"TCP with a wrong password", []string{"PGPASSWORD=wrong"}, tcp, false, `password authentication failed for user "postgres"`},
		{"TCP with the password", []string{"PGPASSWORD=" + secret}, tcp, true, "in as postgres"},
		{"Unix socket of the server's user", nil, []string{"-h", filepath.Join(s.Dir(), "socket"), "-p", strconv.Itoa(s.Port()), "-U", "postgres", "-d", "postgres"}, false, "Permission denied"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, ok := psqlAsOther(t, tc.env, tc.args...)
			if ok != tc.wantOK || !strings.Contains(out, tc.want) {
				t.Fatalf("psql succeeded %v (want %v), output %q (want it to contain %q)", ok, tc.wantOK, out, tc.want)
			}
		})
	}
}

// TestOlderVotrClusterGetsPassword: a cluster made by an older votr (TCP
// trusted, no password, no secret file) is given a password and votr's
// pg_hba.conf at its next start; the password never reaches the log, nor an
// error about a server that refuses it.
func TestOlderVotrClusterGetsPassword(t *testing.T) {
	ctx := testCtx(t)
	s := pgtest.Start(t)
	pgtest.Exec(t, s.DSN("postgres"), `ALTER ROLE postgres PASSWORD NULL`)
	must(t, s.Stop(ctx))
	data := filepath.Join(s.Dir(), "data")
	must(t, os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte("local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"), 0o600))
	must(t, os.Remove(filepath.Join(data, "votr.secret")))

	var logs bytes.Buffer
	s2 := localpg.New(localpg.Options{Dir: s.Dir(), BinDir: binDir(t), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err := s2.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	secret := secretOf(t, s2)
	if fi, err := os.Stat(filepath.Join(data, "votr.secret")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v, %v; want mode 0600", fi, err)
	}
	hba, _ := os.ReadFile(filepath.Join(data, "pg_hba.conf"))
	for _, line := range strings.Split(string(hba), "\n") {
		if strings.HasPrefix(line, "host") && !strings.HasSuffix(line, "scram-sha-256") {
			t.Errorf("pg_hba.conf still has a TCP rule without the password: %q", line)
		}
	}
	noPassword := "postgres://postgres@127.0.0.1:" + strconv.Itoa(s2.Port()) + "/postgres?sslmode=disable"
	if conn, err := pgx.Connect(ctx, noPassword); err == nil {
		conn.Close(ctx)
		t.Error("TCP login without the password still accepted")
	}
	if got := setting(t, ctx, s2.DSN("postgres"), "wal_level"); got != "logical" {
		t.Errorf("wal_level %q", got)
	}

	// A secret that no longer matches the server: Start reports it, and
	// says nothing of either password.
	must(t, os.WriteFile(filepath.Join(data, "votr.secret"), []byte("not-the-password-123\n"), 0o600))
	err := s2.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), "refuses votr's password") {
		t.Errorf("Start with a wrong secret: %v", err)
	}
	for _, text := range []string{logs.String(), errString(err)} {
		for _, pw := range []string{secret, "not-the-password-123"} {
			if strings.Contains(text, pw) {
				t.Errorf("a password appears in the log or the error:\n%s", text)
			}
		}
	}
	if !strings.Contains(logs.String(), "now asks for a password") {
		t.Errorf("the log does not say the server now asks for a password:\n%s", logs.String())
	}
	must(t, os.WriteFile(filepath.Join(data, "votr.secret"), []byte(secret+"\n"), 0o600))
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
