package runner

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/plan"
)

// An apply adding spoke 2 stops between creating the hub→2 slot and
// committing the copy; a `votr sink --feed 0:2` started then refuses (run
// votr apply) and leaves no checkpoint, so the next apply still copies the
// hub's earlier rows to spoke 2.
func TestSinkStartedBeforeBackfill(t *testing.T) {
	ctx, pg, dir, url := onOwnServer(t)
	stateDir := filepath.Join(dir, "state")
	out := &testlog.Buffer{}
	one := topology(t, dir, 8, region{connect: url}, region{id: 1, connect: url})
	if _, err := newRunner(t, stateDir, out).Apply(ctx, one, nil); err != nil {
		t.Fatal(err)
	}
	hub := pg.DSN("votr_0")
	pgtest.Exec(t, hub, `WITH c AS (SELECT candidate FROM candidates ORDER BY candidate LIMIT 3),
		b AS (INSERT INTO ballots (candidate) SELECT candidate FROM c)
		UPDATE totals SET total = total + 1 WHERE candidate IN (SELECT candidate FROM c)`)

	two := topology(t, dir, 8, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url})
	p, err := newRunner(t, stateDir, out).Plan(ctx, two)
	if err != nil {
		t.Fatal(err)
	}
	k := 0
	for i, a := range p.Actions {
		if a.Kind == plan.KindSlot && a.Op == plan.Create && a.Feed == "0:2" {
			k = i + 1
		}
	}
	if k == 0 {
		t.Fatalf("the plan adding spoke 2 creates no slot for feed 0:2:\n%s", strings.Join(planLines(p), "\n"))
	}
	failing := newRunner(t, stateDir, out, func(o *Options) { o.FailAfter = k })
	if _, err := failing.Apply(ctx, two, nil); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("apply stopped after creating the slot: %v", err)
	}
	spoke := pg.DSN("votr_2")
	if n := pgtest.QueryInt(t, pg.DSN("postgres"), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'votr_0_to_2'`); n != 1 {
		t.Fatalf("setup: the stopped apply left %d slots votr_0_to_2, want 1", n)
	}

	// A deadline only so that a sink that streams anyway ends the test.
	sinkCtx, cancel := context.WithTimeout(ctx, time.Minute)
	err = newRunner(t, stateDir, out).Sink(sinkCtx, two, "0:2", "")
	cancel()
	if err == nil || !strings.Contains(err.Error(), "run `votr apply`") {
		t.Fatalf("sink on a feed apply did not finish: %v, want a refusal saying to run votr apply", err)
	}
	if n := pgtest.QueryInt(t, spoke, `SELECT count(*) FROM votr.checkpoints WHERE feed = '0:2'`); n != 0 {
		t.Fatalf("the refused sink left a checkpoint for feed 0:2")
	}

	p, err = newRunner(t, stateDir, out).Plan(ctx, two)
	if err != nil {
		t.Fatal(err)
	}
	copies := false
	for _, a := range p.Actions {
		copies = copies || (a.Kind == plan.KindBackfill && a.Feed == "0:2")
	}
	if !copies {
		t.Fatalf("the next apply does not copy the hub to spoke 2:\n%s", strings.Join(planLines(p), "\n"))
	}
	if _, err := newRunner(t, stateDir, out).Apply(ctx, two, nil); err != nil {
		t.Fatal(err)
	}
	want := pgtest.QueryInt(t, hub, `SELECT count(*) FROM ballots WHERE src = 0`)
	if got := pgtest.QueryInt(t, spoke, `SELECT count(*) FROM ballots WHERE src = 0`); got != want || want < 3 {
		t.Errorf("spoke 2 holds %d of the hub's %d ballots", got, want)
	}
	if n := pgtest.QueryInt(t, spoke, `SELECT count(*) FROM votr.checkpoints WHERE feed = '0:2'`); n != 1 {
		t.Errorf("after apply, feed 0:2 has %d checkpoints, want 1", n)
	}
}
