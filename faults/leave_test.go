package faults_test

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
)

// A spoke removed online (SIGHUP) whose apply is SIGKILLed after the
// removal started but before the spoke's feed into the hub drained: the
// next apply must bring what the spoke committed to the hub before it drops
// the feed's slot and checkpoint. Before the fix it planned only the
// removals and the hub never got those ballots.
//
// The feeds run outside apply (--no-sinks) and no `votr sink` is started,
// so nothing of spoke 2 reaches the hub before the kill: the apply is
// killed when it logs that the leaving spoke's drain begins (its workers
// have stopped by then), which it cannot finish without a sink.
func TestKilledWhileSpokeLeaves(t *testing.T) {
	srv := startServers(t, 2)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	tp := topo{hub: connURL(srv[0]), drainDelay: "10m",
		spokes: []spoke{{id: 1, connect: connURL(srv[1])}, {id: 2, connect: connURL(srv[1])}}}
	path := tp.write(t, dir)
	if res := votr(t, dir, nil, 3*time.Minute, "apply", path, "--auto-approve", "--no-run", "--state-dir", state); res.code != 0 {
		t.Fatalf("apply --no-run: %s", res)
	}
	hub, spoke1, spoke2 := srv[0].DSN("votr_0"), srv[1].DSN("votr_1"), srv[1].DSN("votr_2")

	p := startVotr(t, dir, nil, "apply", path, "--auto-approve", "--no-sinks", "--duration", "2h", "--state-dir", state)
	p.waitOutput(t, "casting ballots", 3*time.Minute)
	waitFor(t, 3*time.Minute, "spoke 2's workers to commit ballots", func() bool {
		return pgtestInt(t, spoke2, `SELECT count(*) FROM ballots WHERE src = 2`) >= 20
	})

	tp.spokes = tp.spokes[:1]
	tp.write(t, dir)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitOutput(t, "draining the leaving spoke's feed into the hub", 3*time.Minute)
	p.kill(t)

	committed := pgtestInt(t, spoke2, `SELECT count(*) FROM ballots WHERE src = 2`)
	if got := pgtestInt(t, hub, `SELECT count(*) FROM ballots WHERE src = 2`); got >= committed {
		t.Fatalf("the hub already has %d of spoke 2's %d ballots before the next apply: the test does not exercise an undrained removal", got, committed)
	}

	res := votr(t, dir, nil, 5*time.Minute, "apply", path, "--auto-approve", "--duration", "1s", "--state-dir", state)
	if res.code != 0 {
		t.Fatalf("apply after the killed removal: %s", res)
	}
	if !strings.Contains(res.stdout, "~ drain") || !strings.Contains(res.stdout, "feed 2:0 into") {
		t.Errorf("the plan does not drain feed 2:0 before removing it:\n%s", res.stdout)
	}

	// Every ballot spoke 2 committed is in the hub and in spoke 1, once.
	want := pgtest.Query(t, spoke2, `SELECT count(*) || ' ' || md5(string_agg(ballot::text, ',' ORDER BY ballot)) FROM ballots WHERE src = 2`)[0]
	for _, r := range []regionDB{{"hub", hub}, {"spoke 1", spoke1}} {
		got := pgtest.Query(t, r.dsn, `SELECT count(*) || ' ' || md5(string_agg(ballot::text, ',' ORDER BY ballot)) FROM ballots WHERE src = 2`)[0]
		if got != want {
			t.Errorf("%s has spoke 2's ballots as %q, spoke 2 committed %q (count md5)", r.name, got, want)
		}
	}
	assertConverged(t, []regionDB{{"hub", hub}, {"spoke 1", spoke1}}, map[int]int64{
		1: pgtestInt(t, spoke1, `SELECT count(*) FROM ballots WHERE src = 1`),
		2: committed,
	})
	// And the removal finished: no slot or checkpoint of feed 2:0 is left.
	if n := pgtestInt(t, srv[1].DSN("postgres"), `SELECT count(*) FROM pg_replication_slots WHERE database = 'votr_2'`); n != 0 {
		t.Errorf("spoke 2 still has %d replication slots", n)
	}
	if n := pgtestInt(t, hub, `SELECT count(*) FROM votr.checkpoints WHERE feed IN ('2:0', '0:2')`); n != 0 {
		t.Errorf("the hub still has %d checkpoints of spoke 2's feeds", n)
	}
}

// A spoke that leaves together with its server: online (SIGHUP) the
// running sink drains its feed first, and the removal goes through even
// though votr can no longer reach that server; between two applies nothing
// drains it, so apply refuses, naming the feed and --drop-undrained, and
// removes it only with that flag.
func TestSpokeLeavesWithItsServer(t *testing.T) {
	srv := startServers(t, 3)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	s1 := spoke{id: 1, connect: connURL(srv[0])}
	s2 := spoke{id: 2, connect: connURL(srv[1])}
	s3 := spoke{id: 3, connect: connURL(srv[2])}
	tp := topo{hub: connURL(srv[0]), spokes: []spoke{s1, s2, s3}}
	path := tp.write(t, dir)
	hub, spoke2 := srv[0].DSN("votr_0"), srv[1].DSN("votr_2")
	checkpoint := func(feed string) int64 {
		return pgtestInt(t, hub, `SELECT count(*) FROM votr.checkpoints WHERE feed = $1`, feed)
	}

	p := startVotr(t, dir, nil, "apply", path, "--auto-approve", "--duration", "2h", "--state-dir", state)
	p.waitOutput(t, "casting ballots", 3*time.Minute)
	waitFor(t, 3*time.Minute, "spoke 2's workers to commit ballots", func() bool {
		return pgtestInt(t, spoke2, `SELECT count(*) FROM ballots WHERE src = 2`) >= 10
	})
	tp.spokes = []spoke{s1, s3}
	tp.write(t, dir)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Minute, "the reload", func() bool {
		out := p.out.String()
		return strings.Contains(out, "Reload complete") || strings.Contains(out, "reload failed")
	})
	if out := p.out.String(); !strings.Contains(out, "Reload complete") {
		t.Fatalf("spoke 2 leaving with its server: the reload failed:\n%s", out)
	}
	if code := p.stop(t, 3*time.Minute); code != 0 {
		t.Errorf("apply exit %d after SIGTERM:\n%s", code, p.out)
	}
	committed := pgtestInt(t, spoke2, `SELECT count(*) FROM ballots WHERE src = 2`)
	if got := pgtestInt(t, hub, `SELECT count(*) FROM ballots WHERE src = 2`); got != committed {
		t.Errorf("the hub has %d of the %d ballots spoke 2 committed before it left", got, committed)
	}
	if n := checkpoint("2:0"); n != 0 {
		t.Errorf("feed 2:0's checkpoint is still in the hub after the reload removed it")
	}

	// Spoke 3 and its server leave between two applies: nothing can drain
	// its feed, so apply refuses.
	tp.spokes = []spoke{s1}
	tp.write(t, dir)
	res := votr(t, dir, nil, 3*time.Minute, "apply", path, "--auto-approve", "--no-run", "--state-dir", state)
	if out := res.stdout + res.stderr; res.code == 0 || !strings.Contains(out, "feed 3:0") || !strings.Contains(out, "would be lost") || !strings.Contains(out, "--drop-undrained") {
		t.Fatalf("apply removing spoke 3 with its server, undrained: want a refusal naming feed 3:0, what is lost and --drop-undrained: %s", res)
	}
	if n := checkpoint("3:0"); n != 1 {
		t.Fatalf("the refused apply removed feed 3:0's checkpoint")
	}
	res = votr(t, dir, nil, 3*time.Minute, "apply", path, "--auto-approve", "--no-run", "--drop-undrained", "--state-dir", state)
	if res.code != 0 {
		t.Fatalf("apply --drop-undrained: %s", res)
	}
	if n := checkpoint("3:0"); n != 0 {
		t.Errorf("feed 3:0's checkpoint is still in the hub after apply --drop-undrained")
	}
}
