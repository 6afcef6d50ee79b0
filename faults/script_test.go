package faults_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/runner"
)

// brokenScript is the project's merge script with the totals merge
// replaced by merge (a TypeScript function expression).
func brokenScript(t *testing.T, dir, name, merge string) string {
	t.Helper()
	src := mustRead(t, scriptPath(t))
	const line = "totals: { merge: (op) => withTombstones(op, totalsKind, mergeTotals) },"
	if !strings.Contains(src, line) {
		t.Fatalf("scripts/votr.ts no longer has %q; update this test", line)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(strings.Replace(src, line, "totals: { merge: "+merge+" },", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// scriptFaultWorkload keeps the number of conflicting totals changes small
// (each failing one costs a few retries): a few slow transactions of one
// candidate each.
const scriptFaultWorkload = "workload:\n  interval: 400ms\n  maxCandidates: 1\n  maxVotes: 2\n  candidateUpdateEvery: 0\n"

// A merge script that fails, three ways (it throws, here by trying to reach
// outside the sandbox; it returns a malformed result; it never returns and
// is interrupted at the deadline), under both onScriptError settings.
// With stop, the feed stops with an error naming the feed, table, position
// and cause, and nothing is parked. With deadletter, each change whose merge
// keeps failing is parked in votr.dead_letters, and `votr check` fails
// naming the feeds. Once the script is fixed, `votr replay` re-applies the
// parked changes and the regions converge with every ballot exactly once.
func TestScriptFaults(t *testing.T) {
	ctx := ctxT(t, 4*time.Minute)
	srv := startServers(t, 1)[0]
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	canary := filepath.Join(dir, "escaped")
	tp := topo{hub: connURL(srv), spokes: []spoke{{id: 1, connect: connURL(srv)}, {id: 2, connect: connURL(srv)}}, candidates: 4, drainDelay: "10s"}
	regions := []regionDB{{"hub", srv.DSN("votr_0")}, {"spoke 1", srv.DSN("votr_1")}, {"spoke 2", srv.DSN("votr_2")}}
	out := &testlog.Buffer{}
	began := time.Now()
	defer func() {
		if testing.Verbose() {
			for _, l := range strings.Split(out.String(), "\n") {
				if strings.Contains(l, "Workers committed") || strings.Contains(l, "merge") || strings.Contains(l, "feed stopped") || strings.Contains(l, "msg=running") {
					t.Log(l)
				}
			}
		}
	}()
	apply := func(script, sink string, d time.Duration) (*runner.ApplyResult, error) {
		t.Helper()
		tp.script = script
		tp.extra = scriptFaultWorkload + sink
		top := tp.load(t, dir)
		t.Logf("%5.1fs: apply", time.Since(began).Seconds())
		defer func() { t.Logf("%5.1fs: apply done", time.Since(began).Seconds()) }()
		var run *runner.RunOptions // nil: converge the resources only
		if d > 0 {
			run = &runner.RunOptions{Duration: d, StatusEvery: time.Second}
		}
		return newRunner(state, out, nil).Apply(ctx, top, run)
	}
	deadLetters := func() int64 {
		var n int64
		for _, r := range regions {
			n += pgtestInt(t, r.dsn, `SELECT count(*) FROM votr.dead_letters WHERE replayed_at IS NULL`)
		}
		return n
	}

	// A merge runs only for a conflict, and a slow workload may cause
	// none (each spoke sees the other's votes before it votes again). So
	// every run below starts with a sure conflict: while no sink runs, the
	// hub and spoke 1 both vote for one candidate (plain SQL; the triggers
	// stamp their clocks), so each side's change meets a target row that
	// differs from its before-image. One key only: every failing key costs
	// the sink a few seconds of retries.
	diverge := func() {
		t.Helper()
		for _, r := range regions[:2] {
			pgtest.Exec(t, r.dsn, `WITH c AS (SELECT candidate AS c FROM totals ORDER BY candidate LIMIT 1),
				u AS (UPDATE totals SET total = total + 1 WHERE candidate = (SELECT c FROM c))
				INSERT INTO ballots (candidate) SELECT c FROM c`)
		}
	}
	if _, err := apply(scriptPath(t), "", 0); err != nil {
		t.Fatalf("apply (resources only): %v\n%s", err, out)
	}

	// 1. stop: the merge tries to run a program; the sandbox has no require.
	escape := brokenScript(t, dir, "escape.ts", `(op) => { require("child_process").execSync("touch `+canary+`"); return mergeTotals(op); }`)
	diverge()
	_, err := apply(escape, "sink:\n  onScriptError: stop\n  retries: 1\n", 4*time.Second)
	if err == nil {
		t.Fatalf("apply with a throwing merge and onScriptError: stop succeeded:\n%s", out)
	}
	for _, want := range []string{"the run stopped early", "table totals", "source LSN", "stopping the feed (onScriptError: stop)", "require is not defined", "fix the script and run again"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the stop error lacks %q: %v", want, err)
		}
	}
	if _, err := os.Stat(canary); err == nil {
		t.Errorf("the merge script ran a program outside the sandbox")
	}
	if n := deadLetters(); n != 0 {
		t.Errorf("%d dead letters with onScriptError: stop", n)
	}
	t.Logf("stop: %v", err)

	// 2. deadletter: a malformed result, then a merge that never returns.
	for _, c := range []struct{ name, merge, reason string }{
		{"malformed", `(op) => ({ apply: 42 } as any)`, "malformed result"},
		{"endless", `(op) => { for (;;) {} }`, "exceeded 100ms"},
	} {
		before := deadLetters()
		path := brokenScript(t, dir, c.name+".ts", c.merge)
		diverge()
		res, err := apply(path, "sink:\n  onScriptError: deadletter\n  retries: 1\n  mergeTimeout: 100ms\n", 3*time.Second)
		if err != nil {
			t.Fatalf("%s merge with onScriptError: deadletter: apply: %v\n%s", c.name, err, out)
		}
		if res.Run.OK {
			t.Errorf("%s merge: the run reports convergence with changes parked", c.name)
		}
		parked := deadLetters() - before
		if parked == 0 {
			t.Fatalf("%s merge: nothing was dead-lettered:\n%s", c.name, out)
		}
		for _, r := range regions {
			for _, reason := range pgtest.Query(t, r.dsn, `SELECT DISTINCT reason FROM votr.dead_letters WHERE replayed_at IS NULL AND tbl = 'totals'`) {
				if !strings.Contains(reason, "merge") || !strings.Contains(reason, "failed") {
					t.Errorf("%s: dead letter reason %q", r.name, reason)
				}
			}
		}
		if found := pgtest.Query(t, srv.DSN("votr_0"), `SELECT count(*) FROM votr.dead_letters WHERE reason LIKE '%' || $1 || '%'`, c.reason); found[0] == "0" {
			t.Errorf("%s merge: no dead letter at the hub says %q", c.name, c.reason)
		}
		t.Logf("%s merge: %d change(s) parked", c.name, parked)
	}
	topoPath := filepath.Join(dir, "topology.yaml")
	res := votr(t, dir, nil, time.Minute, "check", topoPath, "--state-dir", state)
	if res.code != 1 || !strings.Contains(res.stdout, "parked in votr.dead_letters") || !strings.Contains(res.stdout, "fix the merge script and replay them") {
		t.Errorf("check with parked changes: want exit 1 naming the feeds\n%s", res)
	}

	// 3. Replay with a script that still fails changes nothing; with the
	// script fixed, every parked change is replayed, and once the feeds
	// have carried the replayed writes on, the regions converge.
	parked := deadLetters()
	var feed string
	for _, r := range regions {
		if fs := pgtest.Query(t, r.dsn, `SELECT DISTINCT feed FROM votr.dead_letters WHERE replayed_at IS NULL`); len(fs) > 0 {
			feed = fs[0]
		}
	}
	res = votr(t, dir, nil, time.Minute, "replay", topoPath, "--feed", feed, "--state-dir", state)
	if res.code != 1 || !strings.Contains(res.stderr, "feed "+feed+": replay: dead letter") || !strings.Contains(res.stderr, "fix the script and replay again (nothing was replayed)") {
		t.Errorf("replay with the broken script: want exit 1 naming the dead letter\n%s", res)
	}
	if n := deadLetters(); n != parked {
		t.Errorf("a failed replay changed the dead letters: %d parked, %d before", n, parked)
	}
	tp.script, tp.extra = "", scriptFaultWorkload
	tp.write(t, dir)
	res = votr(t, dir, nil, time.Minute, "replay", topoPath, "--state-dir", state)
	if res.code != 0 || !strings.Contains(res.stdout, "feed "+feed+": ") || !strings.Contains(res.stdout, "parked change(s) replayed") {
		t.Fatalf("replay with the fixed script: %s", res)
	}
	t.Logf("replay:\n%s", res.stdout)
	if n := deadLetters(); n != 0 {
		t.Errorf("%d changes still parked after the replay", n)
	}
	r, err := apply("", "", 2*time.Second)
	if err != nil {
		t.Fatalf("apply after the replay: %v\n%s", err, out)
	}
	// Regions downstream of a replayed change hold the old totals until
	// the feeds bring the replayed writes, so the run's validation loops may
	// see violations at its start; the state it ends with must be right.
	if !r.Run.CaughtUp || !r.Run.Report.OK() {
		t.Fatalf("apply after the replay: not converged (caught up %v): %v", r.Run.CaughtUp, r.Run.Report.Problems())
	}
	t.Logf("the run after the replay saw %d invariant violation(s) while the replayed writes travelled", r.Run.Violations)
	committed := map[int]int64{}
	for id := 1; id <= 2; id++ {
		committed[id] = fromSpoke(t, regions[id].dsn, id)
	}
	assertConverged(t, regions, committed)
	if res := votr(t, dir, nil, time.Minute, "check", topoPath, "--state-dir", state); res.code != 0 {
		t.Errorf("check after the replay: %s", res)
	}
}
