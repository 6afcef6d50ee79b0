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

	// The optional grants of docs/operating.md let the sinks tag their
	// writes with replication origins (echoes are skipped, not merged) and
	// skip other triggers, still without superuser.
	for _, db := range []string{"postgres", "select", "user", "votr_2"} {
		pgtest.Exec(t, srv.DSN(db), optionalGrants...) // functions' privileges are per database
	}
	res = run(0, "apply", topoPath, "--auto-approve", "--duration", "2s")
	if strings.Contains(res.stdout+res.stderr, "no permission for replication origins") || !strings.Contains(res.stdout, "converged: all 3 regions identical") {
		t.Errorf("apply with the optional grants:\n%s", res)
	}
	if n := pgtestInt(t, srv.DSN("postgres"), `SELECT count(*) FROM pg_replication_origin`); n != 4 {
		t.Errorf("%d replication origins with the optional grants, want 4 (one per feed)", n)
	}

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
	// Every region: regions on one server must log in alike.
	wrong := strings.ReplaceAll(mustRead(t, topoPath), url.QueryEscape(secret), url.QueryEscape(secret+"-wrong"))
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
	if got := pgtest.Query(t, srv.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname IN ('select', 'user', 'votr_2')`); len(got) != 3 {
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

// optionalGrants are the grants docs/operating.md offers on top of the
// least-privilege role. Function privileges are per database: they are
// run in the database of the connect URL (postgres), where destroy drops
// origins, and in every region database (or in template1 before the region
// databases are created).
var optionalGrants = []string{
	`GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), pg_replication_origin_oid(text),
		pg_replication_origin_session_setup(text), pg_replication_origin_xact_setup(pg_lsn, timestamptz),
		pg_replication_origin_drop(text) TO votr_app`,
	`GRANT SET ON PARAMETER session_replication_role TO votr_app`,
}

func mustRead(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
