package faults_test

import (
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
)

// secret is the password of the test role. It holds characters that must
// be percent-encoded in a URL, so both of its forms are looked for.
const secret = "Hunter2#s3cr/t@pw"

// Least privilege and secrets, in one run: the whole workload (plan, apply
// with sinks and workers, check, a separate sink, destroy, and commands that
// fail) runs as a role that is not a superuser: LOGIN, REPLICATION and
// CREATEDB only, with its password in the topology file and SCRAM required
// by the server. The sinks then work without session_replication_role and
// without replication origins. The password never appears in any output,
// log, state file or the server's log. Region names with quotes and
// semicolons are labels only, and databases named after SQL keywords work
// because every identifier reaching SQL is quoted.
func TestLeastPrivilegeAndSecrets(t *testing.T) {
	srv := startServers(t, 1)[0]
	pgtest.Exec(t, srv.DSN("postgres"), fmt.Sprintf(`CREATE ROLE votr_app LOGIN REPLICATION CREATEDB PASSWORD '%s'`, secret))
	requirePassword(t, srv, "votr_app")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	connect := fmt.Sprintf("postgresql://votr_app:%s@127.0.0.1:%d/?sslmode=prefer", url.QueryEscape(secret), srv.Port())
	topoPath := topo{hub: connect, hubDB: "select", candidates: 8, drainDelay: "30s",
		spokes: []spoke{
			{id: 1, connect: connect, database: "user", name: `x'); DROP TABLE ballots;--`},
			{id: 2, connect: connect, name: `"; SELECT pg_sleep(60); "`},
		},
		extra: "workload:\n  interval: 20ms\n"}.write(t, dir)
	var all strings.Builder
	run := func(want int, args ...string) result {
		t.Helper()
		args = append(args, "--state-dir", state, "--log-level", "debug")
		res := votr(t, dir, nil, 2*time.Minute, args...)
		all.WriteString(res.stdout + res.stderr)
		if res.code != want {
			t.Fatalf("votr %s: exit %d, want %d\n%s", strings.Join(args, " "), res.code, want, res)
		}
		return res
	}

	run(0, "plan", topoPath)
	run(0, "plan", topoPath, "--json", "--log-format", "json")
	res := run(0, "apply", topoPath, "--auto-approve", "--duration", "4s")
	for _, w := range []string{"converged: all 3 regions identical", "no permission for replication origins", `x'); DROP TABLE ballots;--`} {
		if !strings.Contains(res.stdout+res.stderr, w) {
			t.Errorf("apply as votr_app lacks %q:\n%s", w, res)
		}
	}
	run(0, "check", topoPath)
	run(0, "check", topoPath, "--json")

	// A separate sink, also as votr_app, stopped with SIGTERM.
	p := startVotr(t, dir, nil, "sink", topoPath, "--feed", "1:0", "--state-dir", state, "--log-level", "debug", "--log-format", "json")
	p.waitOutput(t, "sink running", time.Minute)
	time.Sleep(time.Second)
	code := p.stop(t, 30*time.Second)
	all.WriteString(p.out.String())
	if code != 0 {
		t.Errorf("sink exited %d on SIGTERM:\n%s", code, p.out)
	}

	// Failures quote the topology and the servers, never the password.
	run(1, "sink", topoPath, "--feed", "3:0")
	run(1, "destroy", topoPath) // no terminal, no --auto-approve
	wrong := strings.Replace(mustRead(t, topoPath), url.QueryEscape(secret), url.QueryEscape(secret+"-wrong"), 1)
	wrongPath := filepath.Join(dir, "wrong.yaml")
	if err := os.WriteFile(wrongPath, []byte(wrong), 0o644); err != nil {
		t.Fatal(err)
	}
	res = run(1, "plan", wrongPath)
	if !strings.Contains(res.stderr, "password authentication failed") {
		t.Errorf("plan with a wrong password: %s", res)
	}
	run(1, "check", wrongPath)

	// The identifiers reached SQL quoted: the keyword-named databases exist.
	if got := query(t, srv.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname IN ('select', 'user', 'votr_2')`); len(got) != 3 {
		t.Errorf("region databases: %v", got)
	}
	run(0, "destroy", topoPath, "--auto-approve")
	if left := votrLeftovers(t, srv); left != "" {
		t.Errorf("destroy as votr_app left %s", left)
	}

	// Nowhere: not in any output, in the state dir or in the server's log.
	texts := map[string]string{"the commands' output": all.String(), "the server log": mustRead(t, filepath.Join(srv.Dir(), "server.log"))}
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && path != topoPath && path != wrongPath {
			texts[path] = mustRead(t, path)
		}
		return nil
	})
	for where, text := range texts {
		for _, form := range []string{secret, url.QueryEscape(secret), "Hunter2"} {
			if strings.Contains(text, form) {
				t.Errorf("the password (as %q) appears in %s", form, where)
			}
		}
	}
	if !strings.Contains(all.String(), "xxxxx") {
		t.Errorf("no redacted URL in the output: the test did not exercise redaction")
	}
}

func mustRead(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
