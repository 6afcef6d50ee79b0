package faults_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/localpg"
)

// badCase is one wrong topology or command line.
type badCase struct {
	name string
	// topology is the file written as topology.yaml ("" writes the valid
	// base topology); {A}, {B}, {SCRIPT}, {DIR} and {FREE} are replaced.
	topology string
	files    map[string]string // more files in the case's directory
	args     []string          // the command line; {FILE} is topology.yaml
	env      []string
	want     []string // in the output (stdout and stderr)
	// touched: the command may leave a state dir behind (it got past
	// validation); nothing may be created on the servers anyway.
	touched bool
}

// validBase is a correct topology on server A that the cases break.
const validBase = `hub:
  connect: "{A}"
spokes:
  - id: 1
    connect: "{A}"
candidates: 4
drainDelay: 10s
script: {SCRIPT}
`

// A catalogue of wrong topologies and command lines, run through the
// binary. Each must exit 1 with a message that says what is wrong and how
// to fix it, and leave nothing behind: no database, slot or origin on the
// servers and no state directory.
func TestBadInput(t *testing.T) {
	srv := startServers(t, 2)
	a, b := srv[0], srv[1]
	setupBadInputServers(t, a, b)
	free := freePort(t)
	aURL := connURL(a)
	aURLWith := func(user string, params ...string) string {
		q := params
		if !strings.Contains(strings.Join(params, "&"), "sslmode=") {
			q = append([]string{"sslmode=disable"}, params...)
		}
		return fmt.Sprintf("postgresql://%s@127.0.0.1:%d/?%s", user, a.Port(), strings.Join(q, "&"))
	}
	base := func(old, new string) string { return strings.Replace(validBase, old, new, 1) }
	// Every region's connect URL (regions on one server must log in alike).
	everyURL := func(u string) string {
		return strings.ReplaceAll(validBase, `connect: "{A}"`, fmt.Sprintf("connect: %q", u))
	}
	apply := []string{"apply", "{FILE}", "--auto-approve", "--no-run"}

	cases := []badCase{
		// The topology file: types, ranges, keys, ids.
		{name: "candidates not a number", topology: base("candidates: 4", "candidates: many"), args: apply,
			want: []string{"topology.yaml:6:13", `candidates must be an integer`, `not "many"`}},
		{name: "workers out of range", topology: validBase + "workers: 0\n", args: apply,
			want: []string{":9:10", "workers is 0; it must be between 1 and 256"}},
		{name: "candidates out of range", topology: base("candidates: 4", "candidates: 5000000"), args: apply,
			want: []string{"candidates is 5000000; it must be between 1 and 1000000"}},
		{name: "drainDelay without a unit", topology: base("drainDelay: 10s", "drainDelay: 60"), args: apply,
			want: []string{`drainDelay: "60" is not a duration; use a Go duration like 30s`}},
		{name: "unknown top-level key", topology: validBase + "drain_delay: 1m\n", args: apply,
			want: []string{`unknown key "drain_delay" at the top level; did you mean drainDelay?`}},
		{name: "unknown key in a spoke", topology: base("    connect: \"{A}\"", "    connect: \"{A}\"\n    host: db1"), args: apply,
			want: []string{`unknown key "host" in a spoke`}},
		{name: "key given twice", topology: validBase + "candidates: 8\n", args: apply,
			want: []string{"candidates is given twice (first at line 6); keep one"}},
		{name: "duplicate spoke ids", topology: base("candidates:", "  - id: 1\n    connect: \"{A}\"\n    database: votr_x\ncandidates:"), args: apply,
			want: []string{"spoke id 1 is already used at line 4; region ids must be unique"}},
		{name: "duplicate databases on one server", topology: base("candidates:", "  - id: 2\n    connect: \"{A}\"\n    database: votr_1\ncandidates:"), args: apply,
			want: []string{"database \"votr_1\" is already used by region 1", "give one of them its own database: name"}},
		{name: "no hub", topology: validBase[strings.Index(validBase, "spokes:"):], args: apply,
			want: []string{"the file has no hub; add a hub: section"}},
		{name: "no spokes", topology: base("  - id: 1\n    connect: \"{A}\"\n", ""), args: apply,
			want: []string{"spokes is empty; add at least one spoke"}},
		{name: "hub with an id", topology: base("hub:\n", "hub:\n  id: 3\n"), args: apply,
			want: []string{"the hub is always region 0; remove id: from hub or set it to 0"}},
		{name: "spoke id zero", topology: base("id: 1", "id: 0"), args: apply,
			want: []string{"spoke id 0 is not positive"}},
		{name: "spoke id not a number", topology: base("id: 1", "id: one"), args: apply,
			want: []string{`id must be an integer (a spoke's region id), not "one"; e.g. id: 1`}},
		{name: "YAML syntax", topology: base("candidates: 4", "candidates: [4"), args: apply,
			want: []string{"YAML syntax error", "check the indentation"}},
		{name: "two YAML documents", topology: validBase + "---\nhub: {}\n", args: apply,
			want: []string{"a second YAML document starts here"}},
		{name: "empty file", topology: "\n", args: apply,
			want: []string{"the file is empty; a topology needs at least hub: and spokes:"}},
		{name: "name with a control character", topology: base("  - id: 1\n", "  - id: 1\n    name: \"us\\u0007east\"\n"), args: apply,
			want: []string{"contains a control or invisible character"}},
		{name: "hostile database name", topology: base("    connect: \"{A}\"\n", "    connect: \"{A}\"\n    database: 'votr_1\"; DROP DATABASE postgres; --'\n"), args: apply,
			want: []string{"is not a plain identifier; use lowercase letters, digits and _"}},
		{name: "system database", topology: base("    connect: \"{A}\"\n", "    connect: \"{A}\"\n    database: postgres\n"), args: apply,
			want: []string{"is a PostgreSQL system database, and votr drops region databases on destroy"}},
		{name: "URL port out of range", topology: everyURL("postgresql://postgres@127.0.0.1:99999/"), args: apply,
			want: []string{"has port 99999; a port is a number from 1 to 65535"}},
		{name: "URL bad sslmode", topology: everyURL(aURL + "&sslmode=sometimes"), args: apply,
			want: []string{"has an invalid sslmode; use one of disable, allow, prefer, require"}},
		{name: "URL wrong scheme", topology: everyURL("mysql://root@127.0.0.1/"), args: apply,
			want: []string{`has scheme "mysql"; write postgresql://USER@HOST:PORT/`}},
		{name: "unset variable", topology: everyURL("postgresql://postgres:${VOTR_NO_SUCH_PW}@127.0.0.1:5432/"), args: apply,
			want: []string{"environment variable VOTR_NO_SUCH_PW is not set; export VOTR_NO_SUCH_PW"}},
		{name: "bad onScriptError", topology: validBase + "sink:\n  onScriptError: ignore\n", args: apply,
			want: []string{`onScriptError is "ignore"; use deadletter (park the change in votr.dead_letters) or stop`}},

		// The merge script.
		{name: "script not found", topology: base("script: {SCRIPT}", "script: nope.ts"), args: apply,
			want: []string{`script "nope.ts" not found`, "relative to the topology file's directory"}},
		{name: "script syntax error", topology: base("script: {SCRIPT}", "script: bad.ts"), args: apply,
			files: map[string]string{"bad.ts": "export const tables = {\n  totals: { merge(op) { return op +; } },\n};\n"},
			want:  []string{`script "bad.ts" does not compile:`, "bad.ts:2:", "fix the script"}},
		// esbuild only strips types, so a TypeScript type error as such is
		// not caught; what matters is the shape the sandbox sees: exports
		// of the wrong type are rejected when the script is loaded.
		{name: "script exports tables of the wrong type", topology: base("script: {SCRIPT}", "script: wrongtype.ts"), args: apply,
			files: map[string]string{"wrongtype.ts": "export const tables: number = 42;\n"},
			want:  []string{"exported `tables` is the number 42, not an object mapping table names"}},
		{name: "script merge of the wrong type", topology: base("script: {SCRIPT}", "script: wrongmerge.ts"), args: apply,
			files: map[string]string{"wrongmerge.ts": "export const tables = { totals: { merge: 'sum' } };\n"},
			want:  []string{"tables.totals.merge is the string \"sum\"; it must be a function"}},
		{name: "script without a merge for a table", topology: base("script: {SCRIPT}", "script: nomerge.ts"), args: apply,
			files: map[string]string{"nomerge.ts": "export const tables = { candidates: { versionColumn: 'version' }, ballots: { merge: (op: any) => ({ drop: true }) }, totals: {} };\n"},
			want:  []string{"has no merge for table totals", "export tables.totals with a merge function"}},
		{name: "script for a table votr does not have", topology: base("script: {SCRIPT}", "script: typo.ts"), args: apply,
			files: map[string]string{"typo.ts": "export const tables = { candidates: { versionColumn: 'version' }, ballots: { merge: (op: any) => ({ drop: true }) }, total: { merge: (op: any) => ({ drop: true }) } };\n"},
			want:  []string{`configures table "total", which votr does not replicate; did you mean totals?`}},
		{name: "script that imports", topology: base("script: {SCRIPT}", "script: imports.ts"), args: apply,
			files: map[string]string{"imports.ts": "import * as fs from 'fs';\nexport const tables = { totals: { merge: () => fs.readFileSync('/etc/passwd') } };\n"},
			want:  []string{"scripts cannot import modules"}},
		{name: "script that loops while loading", topology: base("script: {SCRIPT}", "script: loops.ts") + "sink:\n  mergeTimeout: 100ms\n", args: apply,
			files: map[string]string{"loops.ts": "for (;;) {}\n"},
			want:  []string{"evaluating the script exceeded 100ms"}},

		// Servers and credentials.
		{name: "unreachable server", topology: everyURL(fmt.Sprintf("postgresql://postgres@127.0.0.1:%d/?sslmode=disable&connect_timeout=3", free)), args: apply,
			want: []string{fmt.Sprintf("127.0.0.1:%d", free), "connection refused", "is the server running and reachable"}},
		{name: "regions on one server logging in differently", topology: base(`connect: "{A}"`, fmt.Sprintf("connect: %q", aURLWith("pwuser:the-password"))), args: apply,
			want: []string{fmt.Sprintf("region 1 reaches server 127.0.0.1:%d with another user, password or parameters than region 0", a.Port()), "give every region on it the same connect URL"}},
		{name: "wrong password", topology: everyURL(aURLWith("pwuser:not-the-password")), args: apply,
			want: []string{`password authentication failed for user "pwuser"`, "check the user name and password"}},
		{name: "role that does not exist", topology: everyURL(aURLWith("nosuchrole")), args: apply,
			want: []string{`password authentication failed for user "nosuchrole"`, "check the user name and password"}},
		{name: "database that is not votr's", topology: base("    connect: \"{A}\"\n", "    connect: \"{A}\"\n    database: shop\n"), args: apply,
			want: []string{"database shop on 127.0.0.1:", "exists but was not created by votr; choose another `database:` for that region or drop it"}},
		{name: "server without wal_level=logical", topology: strings.ReplaceAll(validBase, "{A}", "{B}"), args: apply,
			want: []string{"has wal_level = replica", "ALTER SYSTEM SET wal_level = logical", "restart the server"}},
		{name: "user without REPLICATION", topology: strings.ReplaceAll(validBase, "{A}", aURLWith("norepl:pw-norepl")), args: apply,
			want: []string{"role norepl lacks the REPLICATION attribute", `ALTER ROLE "norepl" REPLICATION;`}},
		{name: "user without CREATEDB", topology: strings.ReplaceAll(validBase, "{A}", aURLWith("nocreatedb:pw-nocreatedb")), args: apply,
			want: []string{"role nocreatedb may not create databases", `ALTER ROLE "nocreatedb" CREATEDB;`}},
		{name: "sslmode=require without TLS on the server", topology: everyURL(aURLWith(strings.TrimPrefix(strings.SplitN(a.URL(), "@", 2)[0], "postgresql://"), "sslmode=require")), args: apply,
			want: []string{"server refused TLS connection", "enable ssl on it, or lower sslmode"}},

		// Command lines.
		{name: "unknown command", args: []string{"aply", "{FILE}"}, want: []string{`unknown command "aply"; did you mean "apply"?`}},
		{name: "unknown flag", args: []string{"apply", "{FILE}", "--force"}, want: []string{"votr apply: unknown flag --force", "Usage: votr apply FILE"}},
		{name: "missing FILE", args: []string{"check"}, want: []string{"missing the topology FILE, e.g. votr check examples/local.yaml"}},
		{name: "two FILEs", args: []string{"plan", "{FILE}", "{FILE}"}, want: []string{"one topology FILE expected, got 2"}},
		{name: "negative duration", args: []string{"apply", "{FILE}", "--duration", "-5s"}, want: []string{"--duration -5s: give a positive duration such as 30s"}},
		{name: "bad log level", args: []string{"plan", "{FILE}", "--log-level", "loud"}, want: []string{`VOTR_LOG_LEVEL (--log-level) is "loud"; use debug, info, warn or error`}},
		{name: "bad log format from the environment", args: []string{"plan", "{FILE}"}, env: []string{"VOTR_LOG_FORMAT=xml"},
			want: []string{`VOTR_LOG_FORMAT (--log-format) is "xml"; use text or json`}},
		{name: "sink without --feed", args: []string{"sink", "{FILE}"}, want: []string{"--feed S:D is required, e.g. --feed 1:0"}},
		{name: "sink --feed malformed", args: []string{"sink", "{FILE}", "--feed", "1-0"}, want: []string{`feed "1-0": want SOURCE:TARGET region ids, e.g. 1:0`}},
		{name: "sink --feed not in the topology", args: []string{"sink", "{FILE}", "--feed", "1:2"}, want: []string{`feed "1:2" is not in the topology: feeds join the hub (0) and a spoke`}},
		{name: "sink before apply", args: []string{"sink", "{FILE}", "--feed", "1:0"},
			want: []string{`database "votr_0" does not exist`, "run `votr apply` to create the region's database"}},
		{name: "destroy without state or FILE", args: []string{"destroy", "--auto-approve"}, want: []string{"nothing is recorded in", "pass the topology file, e.g. `votr destroy examples/local.yaml`"}},
		{name: "apply without a terminal or --auto-approve", args: []string{"apply", "{FILE}", "--no-run"},
			want: []string{"apply needs confirmation and stdin is not a terminal: rerun with --auto-approve"}},
		{name: "check before apply", args: []string{"check", "{FILE}"},
			want: []string{"nothing to check: votr_0 on 127.0.0.1:", "does not exist; run `votr apply"}},
	}

	script := scriptPath(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			text := c.topology
			if text == "" {
				text = validBase
			}
			repl := strings.NewReplacer("{A}", aURL, "{B}", connURL(b), "{SCRIPT}", script, "{DIR}", dir)
			path := filepath.Join(dir, "topology.yaml")
			if err := os.WriteFile(path, []byte(repl.Replace(text)), 0o644); err != nil {
				t.Fatal(err)
			}
			for name, body := range c.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			args := make([]string, len(c.args))
			for i, a := range c.args {
				args[i] = strings.ReplaceAll(a, "{FILE}", path)
			}
			res := votr(t, dir, c.env, time.Minute, args...)
			out := res.stdout + res.stderr
			t.Logf("votr %s:\n%s", strings.Join(c.args, " "), strings.TrimSpace(out))
			if res.code != 1 {
				t.Errorf("exit code %d, want 1\n%s", res.code, res)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, res)
				}
			}
			if !c.touched {
				if _, err := os.Stat(filepath.Join(dir, ".votr")); err == nil {
					t.Errorf("the command left a state directory behind")
				}
			}
			for _, s := range []*localpg.Server{a, b} {
				if left := votrLeftovers(t, s); left != "" {
					t.Errorf("the command left %s on a server", left)
					cleanLeftovers(t, s)
				}
			}
		})
	}
}

// setupBadInputServers prepares server A with roles for the credential
// cases and a database that is not votr's, and turns server B into one
// without logical replication.
func setupBadInputServers(t *testing.T, a, b *localpg.Server) {
	t.Helper()
	pgtest.Exec(t, a.DSN("postgres"),
		`CREATE ROLE pwuser LOGIN SUPERUSER PASSWORD 'the-password'`,
		`CREATE ROLE norepl LOGIN CREATEDB PASSWORD 'pw-norepl'`,
		`CREATE ROLE nocreatedb LOGIN REPLICATION PASSWORD 'pw-nocreatedb'`,
		`CREATE DATABASE shop`)
	requirePassword(t, a, "pwuser")
	pgtest.Exec(t, b.DSN("postgres"), `ALTER SYSTEM SET wal_level = replica`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.Restart(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
}

// requirePassword makes the server ask role for its password (SCRAM) over
// TCP explicitly (managed test servers already ask every TCP login for one).
func requirePassword(t *testing.T, s *localpg.Server, roles ...string) {
	t.Helper()
	hba := filepath.Join(s.Dir(), "data", "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	var lines strings.Builder
	for _, r := range roles {
		fmt.Fprintf(&lines, "host all %s 127.0.0.1/32 scram-sha-256\nhost replication %s 127.0.0.1/32 scram-sha-256\n", r, r)
	}
	if err := os.WriteFile(hba, []byte(lines.String()+string(old)), 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, s.DSN("postgres"), `SELECT pg_reload_conf()`)
}

// votrLeftovers describes the databases (other than the ones the tests
// made), replication slots and origins on a server.
func votrLeftovers(t *testing.T, s *localpg.Server) string {
	t.Helper()
	var parts []string
	if dbs := pgtest.Query(t, s.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1', 'shop')`); len(dbs) > 0 {
		parts = append(parts, fmt.Sprintf("databases %v", dbs))
	}
	if slots := pgtest.Query(t, s.DSN("postgres"), `SELECT slot_name FROM pg_replication_slots`); len(slots) > 0 {
		parts = append(parts, fmt.Sprintf("slots %v", slots))
	}
	if origins := pgtest.Query(t, s.DSN("postgres"), `SELECT roname FROM pg_replication_origin`); len(origins) > 0 {
		parts = append(parts, fmt.Sprintf("origins %v", origins))
	}
	return strings.Join(parts, ", ")
}

// cleanLeftovers removes what a failed case left, so that the next cases
// start clean.
func cleanLeftovers(t *testing.T, s *localpg.Server) {
	for _, sl := range pgtest.Query(t, s.DSN("postgres"), `SELECT slot_name FROM pg_replication_slots`) {
		pgtest.Exec(t, s.DSN("postgres"), fmt.Sprintf(`SELECT pg_drop_replication_slot('%s')`, sl))
	}
	for _, db := range pgtest.Query(t, s.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1', 'shop')`) {
		pgtest.Exec(t, s.DSN("postgres"), fmt.Sprintf(`DROP DATABASE %q WITH (FORCE)`, db))
	}
	for _, o := range pgtest.Query(t, s.DSN("postgres"), `SELECT roname FROM pg_replication_origin`) {
		pgtest.Exec(t, s.DSN("postgres"), fmt.Sprintf(`SELECT pg_replication_origin_drop('%s')`, o))
	}
}

// freePort is a loopback port nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}
