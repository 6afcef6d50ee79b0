package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/suggest"
	"github.com/votr-dev/votr/sink"
	"github.com/votr-dev/votr/workload"
)

// tinyScript is a valid merge script; the real one lives in scripts/votr.ts.
const tinyScript = "export const tables = { candidates: { versionColumn: 'version' }, ballots: { merge: (op: any) => ({ drop: true }) }, totals: { merge: (op: any) => ({ apply: op.proposed }) } };\n"

// topoDir makes a directory holding scripts/votr.ts, as a checkout would.
func topoDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "scripts", "votr.ts"), tinyScript)
	return dir
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// env returns a lookup function over a fixed set of variables.
func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

var testEnv = map[string]string{
	"HUB_URL":  "postgresql://votr:s3cr3t-pw@hub.example:5433/ignored?sslmode=verify-full",
	"PW":       "s3cr3t-pw",
	"WORKERS":  "4",
	"EMPTY":    "",
	"BAD_URL":  "postgresql://votr:s3cr3t-pw@hub.example:5433/?sslmode=sometimes",
	"NOT_URL":  "s3cr3t-pw",
	"SPOKE_DB": "votr_east",
}

func TestLoadBad(t *testing.T) {
	const spoke = "hub: {}\nspokes:\n  - id: 1\n"
	cases := []struct {
		name      string
		doc       string
		want      string // substring of the message at line:col
		line, col int
	}{
		// File shape and YAML.
		{"empty file", "", "the file is empty", 1, 1},
		{"blank file", "  \n\n", "the file is empty", 1, 1},
		{"only comments", "# nothing\n", "only comments", 1, 1},
		{"null document", "~\n", "holds no settings", 1, 1},
		{"not a mapping", "- hub\n- spokes\n", "the top level is a list, not a mapping", 1, 1},
		{"scalar document", "hello\n", "not a mapping; write keys like hub:", 1, 1},
		{"yaml syntax", "hub:\n  connect: local\n spokes: x\n", "YAML syntax error", 2, 1},
		{"yaml unclosed flow", "hub: [\n  a: b\n", "YAML syntax error", 2, 1},
		{"tab indentation", "hub:\n\tconnect: local\n", "YAML syntax error", 2, 1},
		{"two documents", spoke + "---\nhub: {}\n", "second YAML document", 4, 1},
		{"duplicate key", spoke + "workers: 2\nworkers: 3\n", "workers is given twice (first at line 4)", 5, 1},
		{"non-scalar key", spoke + "? [a, b]\n: 1\n", "keys are plain names", 4, 3},

		// Unknown keys.
		{"misspelled top key", spoke + "wokers: 2\n", `unknown key "wokers" at the top level; did you mean workers?`, 4, 1},
		{"snake case key", spoke + "drain_delay: 1m\n", "did you mean drainDelay?", 4, 1},
		{"singular spoke", "hub: {}\nspoke:\n  - id: 1\n", "did you mean spokes?", 2, 1},
		{"unrelated key", spoke + "colour: red\n", "valid keys are hub, spokes", 4, 1},
		{"misspelled region key", "hub: {}\nspokes:\n  - id: 1\n    conect: local\n", `unknown key "conect" in a spoke; did you mean connect?`, 4, 5},
		{"misspelled hub key", "hub: {databse: x}\nspokes: [{id: 1}]\n", "did you mean database?", 1, 7},
		{"misspelled sink key", spoke + "sink: {retires: 3}\n", "in sink; did you mean retries?", 4, 8},
		{"misspelled workload key", spoke + "workload:\n  maxVote: 3\n", "did you mean maxVotes?", 5, 3},
		{"merge key", "base: &b {connect: local}\nhub:\n  <<: *b\nspokes: [{id: 1}]\n", `unknown key "base"`, 1, 1},

		// Hub and spokes.
		{"missing hub", "spokes:\n  - id: 1\n", "the file has no hub; add a hub: section", 1, 1},
		{"hub not a mapping", "hub: local\nspokes: [{id: 1}]\n", "hub is \"local\", not a mapping", 1, 6},
		{"hub null", "hub:\nspokes: [{id: 1}]\n", "hub is nothing, not a mapping", 1, 5},
		{"hub id not zero", "hub: {id: 3}\nspokes: [{id: 1}]\n", "the hub is always region 0", 1, 11},
		{"hub id a word", "hub: {id: zero}\nspokes: [{id: 1}]\n", "the hub is always region 0", 1, 11},
		{"missing spokes", "hub: {connect: local}\n", "the file has no spokes; add a spokes: list", 1, 1},
		{"empty spokes", "hub: {}\nspokes: []\n", "spokes is empty", 2, 9},
		{"null spokes", "hub: {}\nspokes:\n", "spokes is empty", 2, 8},
		{"spokes a mapping", "hub: {}\nspokes: {id: 1}\n", "spokes is a mapping, not a list", 2, 9},
		{"spoke a scalar", "hub: {}\nspokes:\n  - 1\n", "a spoke is \"1\", not a mapping", 3, 5},
		{"spoke without id", "hub: {}\nspokes:\n  - name: east\n", "a spoke has no id; add id: N", 3, 5},
		{"duplicate ids", "hub: {}\nspokes:\n  - id: 1\n  - id: 2\n  - id: 1\n", "spoke id 1 is already used at line 3", 5, 9},
		{"zero id", "hub: {}\nspokes:\n  - id: 0\n", "spoke id 0 is not positive", 3, 9},
		{"negative id", "hub: {}\nspokes:\n  - id: -2\n", "spoke id -2 is not positive", 3, 9},
		{"huge id", "hub: {}\nspokes:\n  - id: 1000000\n", "spoke id 1000000 is too large", 3, 9},
		{"overflowing id", "hub: {}\nspokes:\n  - id: 99999999999999999999\n", "spoke id \"99999999999999999999\" is too large", 3, 9},
		{"word id", "hub: {}\nspokes:\n  - id: one\n", `id must be an integer (a spoke's region id), not "one"; e.g. id: 1`, 3, 9},
		{"fraction id", "hub: {}\nspokes:\n  - id: 1.5\n", `not "1.5"`, 3, 9},
		{"list id", "hub: {}\nspokes:\n  - id: [1]\n", "id must be an integer (the region id), not a list", 3, 9},

		// Names.
		{"empty name", "hub: {}\nspokes:\n  - id: 1\n    name: ''\n", "name is empty", 4, 11},
		{"long name", "hub: {}\nspokes:\n  - id: 1\n    name: " + strings.Repeat("x", 33) + "\n", "longer than 32 characters", 4, 11},
		{"control char name", "hub: {}\nspokes:\n  - id: 1\n    name: \"a\\tb\"\n", "control or invisible character", 4, 11},
		{"name a mapping", "hub: {}\nspokes:\n  - id: 1\n    name: {a: 1}\n", "name must be a short label like us-east, not a mapping", 4, 11},
		{"duplicate name", "hub: {name: east}\nspokes:\n  - id: 1\n    name: east\n", `name "east" is already the label of region 0`, 4, 11},

		// Connect.
		{"bad local name", "hub: {connect: 'local:East!'}\nspokes: [{id: 1}]\n", "invalid local server name; use 1-32 lowercase", 1, 16},
		{"empty local name", "hub: {connect: 'local:'}\nspokes: [{id: 1}]\n", "invalid local server name", 1, 16},
		{"empty connect", "hub: {connect: ''}\nspokes: [{id: 1}]\n", "connect is empty", 1, 16},
		{"neither local nor url", "hub: {connect: localhost}\nspokes: [{id: 1}]\n", `"localhost" is neither a local server nor a URL`, 1, 16},
		{"wrong scheme", "hub: {connect: 'mysql://db.example/'}\nspokes: [{id: 1}]\n", `has scheme "mysql"`, 1, 16},
		{"no host", "hub: {connect: 'postgresql:///votr'}\nspokes: [{id: 1}]\n", "has no host", 1, 16},
		{"unparsable url", "hub: {connect: 'postgresql://db example/'}\nspokes: [{id: 1}]\n", "is not a valid URL", 1, 16},
		{"bad escape", "hub: {connect: 'postgresql://u:50%zz@db/'}\nspokes: [{id: 1}]\n", "bad %-escape", 1, 16},
		{"port out of range", "hub: {connect: 'postgresql://db:99999/'}\nspokes: [{id: 1}]\n", "has port 99999", 1, 16},
		{"several hosts", "hub: {connect: 'postgresql://a:5432,b:5432/'}\nspokes: [{id: 1}]\n", "", 1, 16},
		{"bad sslmode", "hub: {connect: 'postgresql://db/?sslmode=sometimes'}\nspokes: [{id: 1}]\n", "invalid sslmode; use one of disable, allow, prefer, require, verify-ca, verify-full", 1, 16},
		{"fragment", "hub: {connect: 'postgresql://db/#x'}\nspokes: [{id: 1}]\n", "#fragment", 1, 16},

		// Databases.
		{"database not identifier", "hub: {}\nspokes:\n  - id: 1\n    database: Votr-1\n", `database "Votr-1" is not a plain identifier`, 4, 15},
		{"database too long", "hub: {}\nspokes:\n  - id: 1\n    database: " + strings.Repeat("v", 49) + "\n", "at most 48 characters (replication slot names", 4, 15},
		{"database reserved", "hub: {database: postgres}\nspokes: [{id: 1}]\n", "PostgreSQL system database", 1, 17},
		{"duplicate database", "hub: {}\nspokes:\n  - id: 1\n    database: votr\n  - id: 2\n    database: votr\n", `database "votr" is already used by region 1 (line 3)`, 6, 15},
		{"duplicate default database", "hub: {}\nspokes:\n  - id: 1\n  - id: 2\n    database: votr_1\n", "already used by region 1", 5, 15},
		{"duplicate database local alias", "hub: {connect: local, database: x}\nspokes:\n  - {id: 1, connect: 'local:default', database: x}\n", "already used by region 0", 3, 49},
		{"same server, another user", "hub: {connect: 'postgresql://alice@db.example/'}\nspokes:\n  - {id: 1, connect: 'postgresql://bob@DB.example:5432/'}\n", "region 1 reaches server db.example:5432 with another user, password or parameters than region 0 (line 1)", 3, 5},
		{"same server, another sslmode", "hub: {connect: 'postgresql://alice@db.example/?sslmode=disable'}\nspokes:\n  - {id: 1, connect: 'postgresql://alice@db.example/?sslmode=verify-full'}\n", "give every region on it the same connect URL", 3, 5},
		{"duplicate database same host", "hub: {connect: 'postgresql://db.example/', database: x}\nspokes:\n  - {id: 1, connect: 'postgresql://DB.example:5432/', database: x}\n", "already used by region 0", 3, 65},

		// Numbers and durations.
		{"zero candidates", spoke + "candidates: 0\n", "candidates is 0; it must be between 1 and 1000000", 4, 13},
		{"negative candidates", spoke + "candidates: -5\n", "candidates is -5", 4, 13},
		{"too many candidates", spoke + "candidates: 5000000\n", "between 1 and 1000000", 4, 13},
		{"zero workers", spoke + "workers: 0\n", "workers is 0; it must be between 1 and 256", 4, 10},
		{"too many workers", spoke + "workers: 1000\n", "between 1 and 256", 4, 10},
		{"word workers", spoke + "workers: ten\n", `workers must be an integer (workers per spoke; each holds one connection), not "ten"; e.g. workers: 1`, 4, 10},
		{"null workers", spoke + "workers:\n", "workers has no value", 4, 9},
		{"bool workers", spoke + "workers: true\n", `not "true"`, 4, 10},
		{"unit-less drainDelay", spoke + "drainDelay: 60\n", `drainDelay: "60" is not a duration; use a Go duration like 30s or 1m`, 4, 13},
		{"word drainDelay", spoke + "drainDelay: soon\n", "use a Go duration like 30s or 1m", 4, 13},
		{"negative drainDelay", spoke + "drainDelay: -1s\n", "drainDelay is -1s; it must be between 0s and 24h0m0s", 4, 13},

		// Workload and sink.
		{"workload not a mapping", spoke + "workload: fast\n", "workload is \"fast\", not a mapping", 4, 11},
		{"maxCandidates over candidates", spoke + "candidates: 5\nworkload: {maxCandidates: 6}\n", "maxCandidates is 6; it must be between 1 and 5", 5, 27},
		{"bad interval", spoke + "workload: {interval: often}\n", "interval: \"often\" is not a duration", 4, 22},
		{"zero validateEvery", spoke + "workload: {validateEvery: 0s}\n", "validateEvery is 0s", 4, 27},
		{"negative candidateUpdateEvery", spoke + "workload: {candidateUpdateEvery: -1}\n", "candidateUpdateEvery is -1", 4, 34},
		{"zero batchTxns", spoke + "sink: {batchTxns: 0}\n", "batchTxns is 0", 4, 19},
		{"bad onScriptError", spoke + "sink: {onScriptError: explode}\n", `onScriptError is "explode"; use deadletter`, 4, 23},
		{"bad slotWarnBytes", spoke + "sink: {slotWarnBytes: lots}\n", "slotWarnBytes is \"lots\", not a size", 4, 23},
		{"bad slotWarnBytes unit", spoke + "sink: {slotWarnBytes: 1XB}\n", "unknown unit", 4, 23},
		{"zero slotWarnBytes", spoke + "sink: {slotWarnBytes: 0}\n", "more than 0 bytes", 4, 23},
		{"huge slotWarnBytes", spoke + "sink: {slotWarnBytes: 99999999TiB}\n", "far too large", 4, 23},
		{"zero mergeTimeout", spoke + "sink: {mergeTimeout: 0s}\n", "mergeTimeout is 0s", 4, 22},
		{"tiny batchBytes", spoke + "sink: {batchBytes: 1kB}\n", "batchBytes is 1000 bytes; it must be between 64KiB and 1GiB", 4, 20},
		{"huge batchBytes", spoke + "sink: {batchBytes: 2GiB}\n", "batchBytes is 2147483648 bytes", 4, 20},
		{"bad batchBytes", spoke + "sink: {batchBytes: big}\n", "batchBytes is \"big\", not a size", 4, 20},

		// Environment.
		{"unset variable", "hub: {connect: '${NOPE}'}\nspokes: [{id: 1}]\n", "environment variable NOPE is not set; export NOPE", 1, 16},
		{"unset variable mid-value", "spokes: [{id: 1}]\nhub:\n  connect: postgresql://votr:${NO_PW}@db/\n", "NO_PW is not set", 3, 30},
		{"unclosed variable", "hub: {}\nspokes:\n  - id: 1\n    name: a${b\n", "a ${ is not closed", 4, 12},
		{"bad variable name", "hub: {}\nspokes:\n  - id: 1\n    name: ${1x}\n", "invalid variable name", 4, 11},
		{"variable not a number", spoke + "workers: ${PW}\n", `workers must be an integer (workers per spoke; each holds one connection), not "${PW}"`, 4, 10},
		{"variable bad url", "hub: {connect: '${BAD_URL}'}\nspokes: [{id: 1}]\n", `connect "${BAD_URL}" has an invalid sslmode`, 1, 16},
		{"variable not a url", "hub: {connect: '${NOT_URL}'}\nspokes: [{id: 1}]\n", `connect "${NOT_URL}" is neither`, 1, 16},
		{"empty variable", "hub: {connect: '${EMPTY}'}\nspokes: [{id: 1}]\n", "connect is empty", 1, 16},

		// Script.
		{"script missing", spoke + "script: nope.ts\n", `script "nope.ts" not found`, 4, 1},
		{"script a directory", spoke + "script: scripts\n", "is a directory", 4, 1},
		{"script empty path", spoke + "script: ''\n", "script is empty", 4, 9},
		{"script does not compile", spoke + "script: bad.ts\n", `script "bad.ts" does not compile: `, 4, 1},
		{"script position", spoke + "script: bad.ts\n", "bad.ts:2:", 4, 1},
		{"script tables not an object", spoke + "script: notobj.ts\n", "exported `tables` is the number 42", 4, 1},
		{"script throws on load", spoke + "script: throws.ts\n", `does not load: script`, 4, 1},
		{"script loops on load", spoke + "script: loops.ts\n", "exceeded 50ms", 4, 1},
		{"script imports", spoke + "script: imports.ts\n", "scripts cannot import modules", 4, 1},
		{"script unknown table", spoke + "script: typo.ts\n", `configures table "ballot", which votr does not replicate; did you mean ballots?`, 4, 1},
		{"script without a merge", spoke + "script: nomerge.ts\n", "has no merge for table totals", 4, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := topoDir(t)
			writeFile(t, filepath.Join(dir, "bad.ts"), "export function merge(op: any) {\n  return op +;\n}\n")
			for name, body := range map[string]string{
				"notobj.ts":  "export const tables = 42;\n",
				"throws.ts":  "throw new Error('not ready');\n",
				"loops.ts":   "while (true) {}\nexport const tables = {};\n",
				"imports.ts": "import { readFileSync } from 'fs';\nexport const tables = { x: readFileSync };\n",
				"typo.ts":    strings.Replace(tinyScript, "ballots:", "ballot:", 1),
				"nomerge.ts": "export const tables = { candidates: { versionColumn: 'version' }, ballots: { merge: (op: any) => ({ drop: true }) }, totals: {} };\n",
			} {
				writeFile(t, filepath.Join(dir, name), body)
			}
			path := filepath.Join(dir, "topology.yaml")
			if strings.Contains(c.doc, "loops.ts") {
				c.doc += "sink: {mergeTimeout: 50ms}\n"
			}
			writeFile(t, path, c.doc)
			top, err := Load(path, env(testEnv))
			if err == nil {
				t.Fatalf("Load accepted a bad topology: %+v", top)
			}
			es := AsErrors(err)
			if len(es) == 0 {
				t.Fatalf("error is not a config.Errors: %v", err)
			}
			for _, e := range es {
				if e.File != path || e.Line < 1 || e.Col < 1 {
					t.Errorf("error without a position: %#v", e)
				}
			}
			for _, e := range es {
				if e.Line == c.line && e.Col == c.col && strings.Contains(e.Msg, c.want) {
					if !strings.Contains(e.Msg, ";") {
						t.Errorf("message does not say how to fix it: %s", e.Msg)
					}
					return
				}
			}
			t.Errorf("want %d:%d: ...%s..., got:\n%v", c.line, c.col, c.want, err)
		})
	}
}

// A missing default script is reported at the top of the file.
func TestLoadDefaultScriptMissing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "t.yaml")
	writeFile(t, path, "hub: {}\nspokes: [{id: 1}]\n")
	_, err := Load(path, nil)
	es := AsErrors(err)
	if len(es) != 1 || es[0].Line != 1 || es[0].Col != 1 || !strings.Contains(es[0].Msg, "no script: given and the default scripts/votr.ts") {
		t.Fatalf("got %v", err)
	}
}

// Every problem is reported, one per line, in file order.
func TestLoadReportsAllErrors(t *testing.T) {
	dir := topoDir(t)
	path := filepath.Join(dir, "t.yaml")
	writeFile(t, path, "workers: 0\nhub: {connect: 'mysql://x/'}\nspokes:\n  - id: 1\n  - id: 1\ndrainDelay: 60\n")
	_, err := Load(path, nil)
	lines := strings.Split(err.Error(), "\n")
	want := []string{":1:10: workers is 0", ":2:16: connect", ":5:9: spoke id 1", ":6:13: drainDelay"}
	if len(lines) != len(want) {
		t.Fatalf("want %d errors, got:\n%v", len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], path+w) {
			t.Errorf("line %d: want prefix %q, got %q", i, path+w, lines[i])
		}
	}
}

func TestLoadUnreadable(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.yaml"), "no such file"},
		{dir, "is it a directory?"},
	} {
		_, err := LoadFile(c.path)
		var e *Error
		if !errors.As(err, &e) || e.File != c.path || !strings.Contains(e.Msg, c.want) {
			t.Errorf("%s: got %v", c.path, err)
		}
	}
}

func TestLoadDefaults(t *testing.T) {
	dir := topoDir(t)
	path := filepath.Join(dir, "t.yaml")
	writeFile(t, path, "hub: {}\nspokes:\n  - id: 1\n  - id: 7\n    name: far\n")
	top, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := &Topology{
		Path: path, Dir: dir,
		Hub:        Region{ID: 0, Connect: "local", Database: "votr_0", Pos: Pos{1, 6}},
		Spokes:     []Region{{ID: 1, Connect: "local", Database: "votr_1", Pos: Pos{3, 5}}, {ID: 7, Name: "far", Connect: "local", Database: "votr_7", Pos: Pos{4, 5}}},
		Candidates: 128, Workers: 1, DrainDelay: time.Minute,
		Script: filepath.Join(dir, "scripts", "votr.ts"),
		Workload: workload.Options{BallotsPerTxn: 10, MaxCandidates: 10, MaxVotes: 10, Interval: 100 * time.Millisecond,
			CandidateUpdateEvery: 100, ValidateEvery: 15 * time.Second, ReportEvery: 5 * time.Second},
		Sink: sink.Options{BatchTxns: 1000, BatchRows: 10000, BatchBytes: 64 << 20, MergeTimeout: 5 * time.Second, Retries: 3,
			OnScriptError: sink.DeadLetter, SlotWarnBytes: 1 << 30, TombstoneEvery: time.Minute, TombstoneMargin: sink.DefaultTombstoneMargin},
	}
	if top.Program == nil || top.Program.JS == "" {
		t.Fatal("Load did not compile the script")
	}
	top.Program = nil
	if got, w := fmt.Sprintf("%+v", *top), fmt.Sprintf("%+v", *want); got != w {
		t.Errorf("defaults:\n got %s\nwant %s", got, w)
	}
	if got := top.Hub.Label(); got != "0 (hub)" {
		t.Errorf("hub label %q", got)
	}
	if fs := top.Feeds(); len(fs) != 4 || fs[0].String() != "1:0" || fs[3].String() != "0:7" {
		t.Errorf("feeds %v", fs)
	}
}

func TestLoadEverything(t *testing.T) {
	dir := topoDir(t)
	writeFile(t, filepath.Join(dir, "merge", "m.ts"), tinyScript)
	path := filepath.Join(dir, "t.yaml")
	writeFile(t, path, `# every key, with variables
hub:
  id: 0
  name: central
  connect: ${HUB_URL}
  database: votr_hub
spokes:
  - id: 1
    name: "cost: $${HOME} $5"
    connect: postgresql://votr:${PW}@db1.example/?sslmode=require&application_name=votr
    database: ${SPOKE_DB}
  - id: 2
    connect: local:west
    database: votr_east   # same name, other server: fine
  - id: 3
    connect: local:west
candidates: 16
workers: ${WORKERS}
drainDelay: 90s
maxBallots: 500
script: merge/m.ts
workload:
  maxCandidates: 16
  maxVotes: 3
  interval: 0s
  candidateUpdateEvery: 0
  validateEvery: 250ms
  reportEvery: 2s
sink:
  batchTxns: 50
  batchRows: 500
  batchBytes: 8MiB
  mergeTimeout: 2s
  retries: 0
  onScriptError: stop
  slotWarnBytes: 512MiB
`)
	top, err := Load(path, env(testEnv))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"hub", top.Hub, Region{ID: 0, Name: "central", Connect: testEnv["HUB_URL"], Database: "votr_hub", Pos: Pos{3, 3}}},
		{"spoke 1 name", top.Spokes[0].Name, "cost: ${HOME} $5"},
		{"spoke 1 connect", top.Spokes[0].Connect, "postgresql://votr:s3cr3t-pw@db1.example/?sslmode=require&application_name=votr"},
		{"spoke 1 redacted", top.Spokes[0].Redacted(), "postgresql://votr:xxxxx@db1.example/?sslmode=require&application_name=votr"},
		{"spoke 1 database", top.Spokes[0].Database, "votr_east"},
		{"spoke 2 server", top.Spokes[1].ServerKey(), "local:west"},
		{"spoke 3 database", top.Spokes[2].Database, "votr_3"},
		{"hub server", top.Hub.ServerKey(), "hub.example:5433"},
		{"spoke 1 server", top.Spokes[0].ServerKey(), "db1.example:5432"},
		{"workers", top.Workers, 4},
		{"candidates", top.Candidates, 16},
		{"drainDelay", top.DrainDelay, 90 * time.Second},
		{"maxBallots", top.MaxBallots, 500},
		{"script", top.Script, filepath.Join(dir, "merge", "m.ts")},
		{"workload", top.Workload, workload.Options{BallotsPerTxn: 10, MaxCandidates: 16, MaxVotes: 3, CandidateUpdateEvery: 0, ValidateEvery: 250 * time.Millisecond, ReportEvery: 2 * time.Second}},
		{"sink", top.Sink, sink.Options{BatchTxns: 50, BatchRows: 500, BatchBytes: 8 << 20, MergeTimeout: 2 * time.Second, OnScriptError: sink.StopFeed, SlotWarnBytes: 512 << 20, TombstoneEvery: time.Minute, TombstoneMargin: sink.DefaultTombstoneMargin}},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}
}

func TestLoadSmallValues(t *testing.T) {
	dir := topoDir(t)
	path := filepath.Join(dir, "t.yaml")
	cases := []struct {
		extra string
		check func(*Topology) bool
	}{
		{"candidates: 4\n", func(t *Topology) bool { return t.Workload.MaxCandidates == 4 }},
		{"drainDelay: 0\n", func(t *Topology) bool { return t.DrainDelay == 0 }},
		{"sink: {batchBytes: 4MiB}\n", func(t *Topology) bool { return t.Sink.BatchBytes == 4<<20 }},
		{"sink: {slotWarnBytes: 1024}\n", func(t *Topology) bool { return t.Sink.SlotWarnBytes == 1024 }},
		{"sink: {slotWarnBytes: 2GB}\n", func(t *Topology) bool { return t.Sink.SlotWarnBytes == 2e9 }},
		{"sink: {slotWarnBytes: '64 kib'}\n", func(t *Topology) bool { return t.Sink.SlotWarnBytes == 64<<10 }},
		{"workers: '3'\n", func(t *Topology) bool { return t.Workers == 3 }},
		{"x: &a local\nhub: {connect: *a}\n", nil}, // aliases resolve; "x" is unknown: checked below
	}
	for _, c := range cases {
		writeFile(t, path, "spokes: [{id: 1}]\n"+c.extra+func() string {
			if strings.Contains(c.extra, "hub:") {
				return ""
			}
			return "hub: {}\n"
		}())
		top, err := Load(path, nil)
		if c.check == nil {
			if err == nil || !strings.Contains(err.Error(), `unknown key "x"`) {
				t.Errorf("%q: got %v", c.extra, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.extra, err)
			continue
		}
		if !c.check(top) {
			t.Errorf("%q: got %+v", c.extra, top)
		}
	}
}

// Passwords in bad URLs, as written or from the environment, never reach an error.
func TestErrorsHidePasswords(t *testing.T) {
	const pw = "hunter2SECRET"
	vars := map[string]string{
		"PW":      pw,
		"URL":     "postgresql://votr:" + pw + "@db/?sslmode=nope",
		"RAW":     pw,
		"HOSTURL": "postgresql://db:" + pw + "/",
	}
	connects := []string{
		"postgresql://votr:" + pw + "@db/?sslmode=nope",
		"postgresql://votr:" + pw + "@db:99999/",
		"postgresql://votr:hun/ter2SECRET@db/",
		"postgresql://votr:hunter2SECRET%zz@db/",
		"postgresql://votr:hunter2SECRET#@db/",
		"mysql://votr:" + pw + "@db/",
		"postgresql://votr:" + pw + "@/",
		"postgresql://db/?sslmode=nope&password=" + pw,
		"votr:" + pw + "@db",
		"host=db password=" + pw,
		"host=db password = '" + pw + " x'",
		"${URL}",
		"${RAW}",
		"${HOSTURL}?sslmode=x",
		"postgresql://votr:${PW}@db/?sslmode=nope",
		"postgresql://votr:${PW}",
	}
	dir := topoDir(t)
	path := filepath.Join(dir, "t.yaml")
	for _, c := range connects {
		// The same server twice also exercises the duplicate-database message.
		doc := fmt.Sprintf("hub: {connect: %q, database: d}\nspokes: [{id: 1, connect: %q, database: d}, {id: 2, database: '${PW}'}]\nworkers: ${PW}\n", c, c)
		writeFile(t, path, doc)
		_, err := Load(path, env(vars))
		if err == nil {
			t.Errorf("%s: accepted", c)
			continue
		}
		for _, leak := range []string{pw, "hunter2", "SECRET", "ter2"} {
			if strings.Contains(err.Error(), leak) {
				t.Errorf("connect %s: error shows the password:\n%v", c, err)
			}
		}
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"local": "local",
		"postgresql://u:pw@h:5/d?sslmode=require": "postgresql://u:xxxxx@h:5/d?sslmode=require",
		"postgresql://u@h/":                       "postgresql://u@h/",
		"postgresql://u:p@ss@h/":                  "postgresql://u:xxxxx@h/",
		"postgres://h/?PASSWORD=pw&x=1":           "postgres://h/?PASSWORD=xxxxx&x=1",
		"host=h password='p w' user=u":            "host=h password=xxxxx",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTopologyErrorf(t *testing.T) {
	top := &Topology{Path: "t.yaml"}
	e := top.Errorf(Pos{3, 5}, "database %s exists but is not votr's; pick another database:", "votr_1")
	if e.Error() != "t.yaml:3:5: database votr_1 exists but is not votr's; pick another database:" {
		t.Error(e)
	}
}

func TestSuggest(t *testing.T) {
	for key, want := range map[string]string{
		"wokers": "workers", "Workers": "workers", "drain_delay": "drainDelay", "candiates": "candidates",
		"scirpt": "script", "colour": "", "x": "",
	} {
		if got := suggest.Closest(key, topKeys); got != want {
			t.Errorf("suggest(%q) = %q, want %q", key, got, want)
		}
	}
}
