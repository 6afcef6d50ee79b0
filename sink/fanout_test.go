package sink

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/schema"
)

// A hub's outbound feeds through one slot, with writers on the hub and on
// both spokes and the fanout stopped and started again midway (a new
// session of every outbound feed, each from its own checkpoint): every
// region converges, the invariant holds in each, each outbound feed skips
// its own spoke's echoes, one walsender serves the hub's outbound feeds,
// and the slot is confirmed past the writes.
func TestFanoutFeedsShareOneSlot(t *testing.T) {
	rs := regionsOnOneServer(t, []int{0, 1, 2}, [2]int{1, 0}, [2]int{2, 0})
	hub, spokes := rs[0], rs[1:]
	slot := createSharedSlot(t, hub)
	opts := options(200, 10000, 3)
	prog := votrScript(t)
	var ups []*running
	var downCfgs []Config
	for _, sp := range spokes {
		ups = append(ups, start(t, feedConfig(t, sp, hub, prog, opts)))
		cfg := feedConfig(t, hub, sp, prog, opts)
		addCheckpoint(t, cfg)
		joinShared(t, cfg, slot)
		downCfgs = append(downCfgs, cfg)
	}
	runFanout := func() []*running { return startFanout(t, slot, downCfgs, 0) }
	downs := runFanout()

	stop := make(chan struct{})
	done := []func() int64{
		writers(t, hub.dsn, 2, 20, stop, time.Millisecond),
		writers(t, spokes[0].dsn, 2, 21, stop, time.Millisecond),
		writers(t, spokes[1].dsn, 2, 22, stop, time.Millisecond),
	}
	waitFor(t, "the outbound feeds to apply something", func() bool {
		return downs[0].s.Status().Txns > 0 && downs[1].s.Status().Txns > 0
	})
	if err := downs[0].stop(t); err != nil {
		t.Fatalf("fanout stopped with %v", err)
	}
	downs = runFanout()
	time.Sleep(time.Second)
	close(stop)
	var written int64
	for _, d := range done {
		written += d()
	}
	end := sourceLSN(t, hub.dsn)

	converged := false
	for round := 0; round < 10 && !converged; round++ {
		for i, sp := range spokes {
			waitCaughtUp(t, ups[i], sp.dsn, time.Minute)
			waitCaughtUp(t, downs[i], hub.dsn, time.Minute)
		}
		h := convergedDigest(t, hub.dsn)
		converged = h == convergedDigest(t, spokes[0].dsn) && h == convergedDigest(t, spokes[1].dsn)
	}
	if !converged {
		t.Fatalf("regions do not converge after %d transactions", written)
	}
	for _, r := range rs {
		checkInvariant(t, r.dsn)
	}
	for i, d := range downs {
		if st := d.s.Status(); st.Skipped == 0 || st.Txns == 0 {
			t.Errorf("outbound feed 0:%d applied %d and skipped %d transactions: its spoke's echoes were not skipped by their origin", spokes[i].id, st.Txns, st.Skipped)
		}
	}
	if n := queryInt(t, hub.dsn, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND active`); n != 1 {
		t.Errorf("%d active slots in the hub's database, want the one shared slot", n)
	}
	waitFor(t, "the shared slot confirmed past the writes", func() bool {
		return queryInt(t, hub.dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn >= $2::text::pg_lsn`, slot, end.String()) == 1
	})
}

// A hub's outbound feeds through one slot, stopped at random moments
// (cancelled, one spoke's apply sessions terminated, the other spoke's
// server crashed, which loses its unflushed commits so that the feeds
// resume from different checkpoints) while the hub keeps writing: each
// spoke applies every hub transaction exactly once. Without a script a
// transaction applied twice would conflict, and one the shared slot let go
// of before the slower feed had it would be missing.
func TestFanoutExactlyOnceAcrossKills(t *testing.T) {
	hub := newRegion(t, pgtest.Start(t), 0)
	spokeSrv := []*localpg.Server{pgtest.Start(t), pgtest.Start(t)}
	spokes := []region{newRegion(t, spokeSrv[0], 1), newRegion(t, spokeSrv[1], 2)}
	slot := createSharedSlot(t, hub)
	var cfgs []Config
	for _, sp := range spokes {
		cfg := feedConfig(t, hub, sp, nil, options(20, 1000, 0))
		addCheckpoint(t, cfg)
		joinShared(t, cfg, slot)
		cfgs = append(cfgs, cfg)
	}
	runFanout := func() []*running { return startFanout(t, slot, cfgs, 0) }

	stop := make(chan struct{})
	done := writers(t, hub.dsn, 2, 9, stop, 2*time.Millisecond)
	rng := rand.New(rand.NewPCG(3, 4))
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		rs := runFanout()
		waitFor(t, "both outbound feeds to apply something", func() bool {
			return rs[0].s.Status().Txns > 0 && rs[1].s.Status().Txns > 0
		})
		time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
		switch i % 3 {
		case 0:
			// Spoke 2's rows held by a client for a while: its feed
			// falls behind spoke 1's, and the slot may be confirmed
			// only as far as the slower one has flushed.
			release := holdRows(t, spokes[1].dsn)
			time.Sleep(1500 * time.Millisecond) // past a status update
			if err := rs[0].stop(t); err != nil {
				t.Fatalf("Run: %v", err)
			}
			release()
		case 1:
			pgtest.Exec(t, spokes[0].dsn, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'votr-sink'`)
			time.Sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond)
		case 2:
			if err := spokeSrv[1].Restart(ctx, "immediate"); err != nil {
				t.Fatalf("restart spoke 2's server: %v", err)
			}
			time.Sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond)
		}
		if err := rs[0].stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		for _, sp := range spokes {
			checkInvariant(t, sp.dsn)
		}
	}
	close(stop)
	n := done()
	checkAppliedOnce(t, runFanout(), hub, spokes, n)
}

// checkAppliedOnce lets a fanout of script-less feeds from the hub catch
// up, stops it, and checks that each spoke has the hub's rows and applied
// each of its n transactions once: a transaction applied twice would
// conflict, one missed would leave the count short.
func checkAppliedOnce(t *testing.T, fanout []*running, hub region, spokes []region, n int64) {
	t.Helper()
	for _, r := range fanout {
		waitCaughtUp(t, r, hub.dsn, time.Minute)
	}
	if err := fanout[0].stop(t); err != nil {
		t.Fatalf("fanout stopped with %v", err)
	}
	want := digest(t, hub.dsn)
	for _, sp := range spokes {
		if got := digest(t, sp.dsn); got != want {
			t.Errorf("spoke %d differs from the hub:\n got %s\nwant %s", sp.id, got, want)
		}
		checkInvariant(t, sp.dsn)
		feed := fmt.Sprintf("0:%d", sp.id)
		txns := queryInt(t, sp.dsn, `SELECT txns FROM votr.checkpoints WHERE feed = $1`, feed)
		conflicts := queryInt(t, sp.dsn, `SELECT conflicts FROM votr.checkpoints WHERE feed = $1`, feed)
		t.Logf("feed %s: hub txns %d, applied %d, conflicts %d", feed, n, txns, conflicts)
		if txns != n || conflicts != 0 {
			t.Errorf("feed %s applied %d of the hub's %d transactions with %d conflicts: some was applied twice or not at all", feed, txns, n, conflicts)
		}
	}
}

// One outbound feed's target refusing connections: the fanout copies the
// shared slot to that feed's own slot within seconds (the detach time, an
// hour here, is for failures other than a target out of reach) and runs the
// feed alone. The other feed keeps applying, and the shared
// slot is confirmed past the hub's writes while the refusing spoke's own
// slot keeps them. A fanout started again once the spoke takes
// connections runs the feed alone still (the shared slot has passed what
// it applied), behind the shared slot for a while (its rows held), until
// it has caught up, then hands it back to the shared slot and drops its
// own. Each spoke applies every hub transaction
// exactly once.
func TestFanoutDetachesAFeedWhoseTargetIsDown(t *testing.T) {
	hub, spokes, slot, cfgs := scriptlessHubFeeds(t)
	admin, away, own := hub.srv.DSN("postgres"), spokes[1].db, schema.Slot(hub.db, spokes[1].id)
	slotAt := func(name string, cmp string, lsn pglogrepl.LSN) bool {
		return queryInt(t, hub.dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn `+cmp+` $2::text::pg_lsn`, name, lsn.String()) == 1
	}

	downs := startFanout(t, slot, cfgs, time.Hour)
	stop := make(chan struct{})
	done := writers(t, hub.dsn, 2, 5, stop, 2*time.Millisecond)
	waitFor(t, "both outbound feeds to apply something", func() bool {
		return downs[0].s.Status().Txns > 0 && downs[1].s.Status().Txns > 0
	})
	pgtest.Exec(t, admin, `ALTER DATABASE `+away+` ALLOW_CONNECTIONS false`,
		`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '`+away+`'`)
	down := time.Now()
	waitFor(t, "feed 0:2 detached to its own slot, no longer recorded as reading the shared one", func() bool {
		return slotExists(t, hub.dsn, own) && !isMember(t, hub, "0:2")
	})
	t.Logf("feed 0:2 detached %s after its spoke refused connections", time.Since(down).Round(time.Millisecond))
	if !isMember(t, hub, "0:1") {
		t.Errorf("feed 0:1 is no longer recorded as reading the shared slot")
	}
	mark := sourceLSN(t, hub.dsn)
	waitFor(t, "the shared slot confirmed past the hub's writes while spoke 2 refuses connections", func() bool {
		return slotAt(slot, ">=", mark)
	})
	if !slotAt(own, "<", mark) {
		t.Errorf("feed 0:2's own slot is confirmed past writes made while its spoke refused connections")
	}
	if err := downs[0].stop(t); err != nil {
		t.Fatalf("fanout stopped with %v", err)
	}
	time.Sleep(200 * time.Millisecond) // more hub writes spoke 2 lacks
	pgtest.Exec(t, admin, `ALTER DATABASE `+away+` ALLOW_CONNECTIONS true`)

	// Spoke 2's rows held for a moment: its feed, alone, stays behind the
	// shared slot for several of the fanout's looks at it.
	release := holdRows(t, spokes[1].dsn)
	downs = startFanout(t, slot, cfgs, 10*time.Second)
	waitFor(t, "feed 0:1 applying while feed 0:2, alone, waits", func() bool { return downs[0].s.Status().Txns > 50 })
	time.Sleep(time.Second)
	release()
	waitFor(t, "feed 0:2 handed back to the shared slot (its own dropped)", func() bool {
		return !slotExists(t, hub.dsn, own)
	})
	if !isMember(t, hub, "0:2") {
		t.Errorf("feed 0:2 was handed back without being recorded as reading the shared slot")
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	n := done()
	// The shared sessions start again after a handover: wait for them.
	waitFor(t, "the shared slot streaming, the only active slot in the hub's database", func() bool {
		return queryInt(t, hub.dsn, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND active`) == 1 &&
			queryInt(t, hub.dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active`, slot) == 1
	})
	checkAppliedOnce(t, downs, hub, spokes, n)
}

// Both outbound feeds' targets refusing connections (one server holding
// both spokes is down, say): no feed is singled out and detached, however
// long it lasts; once the spokes take connections again, both go on
// through the shared slot, each hub transaction applied once.
func TestFanoutKeepsItsFeedsWhenNoTargetCanBeReached(t *testing.T) {
	hub, spokes, slot, cfgs := scriptlessHubFeeds(t)
	admin := hub.srv.DSN("postgres")
	downs := startFanout(t, slot, cfgs, time.Hour)
	stop := make(chan struct{})
	done := writers(t, hub.dsn, 2, 9, stop, 2*time.Millisecond)
	waitFor(t, "both outbound feeds to apply something", func() bool {
		return downs[0].s.Status().Txns > 0 && downs[1].s.Status().Txns > 0
	})
	for _, sp := range spokes {
		pgtest.Exec(t, admin, `ALTER DATABASE `+sp.db+` ALLOW_CONNECTIONS false`,
			`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '`+sp.db+`'`)
	}
	var first time.Time
	waitFor(t, "the feeds failing to reach any target for three times the time that detaches one", func() bool {
		if !strings.Contains(downs[0].s.Status().LastError, "no target of") {
			return false
		}
		if first.IsZero() {
			first = time.Now()
		}
		return time.Since(first) > 3*unreachableFor
	})
	for _, sp := range spokes {
		feed := schema.FeedName(0, sp.id)
		if slotExists(t, hub.dsn, schema.Slot(hub.db, sp.id)) || !isMember(t, hub, feed) {
			t.Errorf("feed %s was detached while no target could be reached", feed)
		}
	}
	for _, sp := range spokes {
		pgtest.Exec(t, admin, `ALTER DATABASE `+sp.db+` ALLOW_CONNECTIONS true`)
	}
	time.Sleep(300 * time.Millisecond) // hub writes made while both were away
	close(stop)
	checkAppliedOnce(t, downs, hub, spokes, done())
}

// One outbound feed stalled (a client holds its spoke's totals rows, and
// the feed's lock waits are retried for as long as they last) for longer
// than the detach time: the feed is detached rather than holding the other
// back, which applies the hub's writes meanwhile. Once the rows are let go
// the feed catches up alone and is handed back. Each spoke applies every
// hub transaction exactly once.
func TestFanoutDetachesAStalledFeed(t *testing.T) {
	hub, spokes, slot, cfgs := scriptlessHubFeeds(t)
	own := schema.Slot(hub.db, spokes[1].id)
	downs := startFanout(t, slot, cfgs, time.Second)
	stop := make(chan struct{})
	done := writers(t, hub.dsn, 2, 7, stop, 2*time.Millisecond)
	waitFor(t, "both outbound feeds to apply something", func() bool {
		return downs[0].s.Status().Txns > 0 && downs[1].s.Status().Txns > 0
	})
	release := holdRows(t, spokes[1].dsn)
	waitFor(t, "the stalled feed 0:2 detached to its own slot", func() bool {
		return slotExists(t, hub.dsn, own)
	})
	before := downs[0].s.Status().Txns
	waitFor(t, "feed 0:1 applying while spoke 2's rows are held", func() bool {
		return downs[0].s.Status().Txns > before+50
	})
	release()
	waitFor(t, "feed 0:2 handed back to the shared slot (its own dropped)", func() bool {
		return !slotExists(t, hub.dsn, own)
	})
	close(stop)
	n := done()
	checkAppliedOnce(t, downs, hub, spokes, n)
}

// A feed of a fanout that has neither its own slot nor a record of reading
// the shared slot (its own slot dropped by hand after a detach, say) has
// lost what it had not applied: the fanout refuses to start, naming the
// feed and the way out, and applies nothing.
func TestFanoutRefusesAFeedThatLostItsSlot(t *testing.T) {
	hub, spokes, slot, cfgs := scriptlessHubFeeds(t)
	pgtest.Exec(t, hub.dsn, `DELETE FROM votr.slot_members WHERE feed = '0:2'`)
	pgtest.Exec(t, hub.dsn, `INSERT INTO public.ballots (candidate) SELECT candidate FROM public.candidates LIMIT 3`)
	f, _ := newFanout(t, slot, cfgs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := f.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "feed 0:2 has no slot of its own") || !strings.Contains(err.Error(), "votr apply") {
		t.Fatalf("Run = %v, want an error naming feed 0:2 and votr apply", err)
	}
	for _, sp := range spokes {
		if n := queryInt(t, sp.dsn, `SELECT count(*) FROM public.ballots`); n != 0 {
			t.Errorf("%s applied %d ballots", sp.db, n)
		}
	}
}

// A member (0:2) left out of a fanout (its spoke left a running apply, or
// `votr sink --feed 0:*` runs an edited topology) while the hub writes is
// given a copy of the shared slot before the fanout without it streams;
// run again with it, it reads that copy and applies every hub transaction
// exactly once. (Found by review: it used to resume from the shared slot,
// which had passed it, and miss what came between.)
func TestFanoutGivesAnAbsentMemberItsOwnSlot(t *testing.T) {
	hub, spokes, slot, cfgs := scriptlessHubFeeds(t)
	both := startFanout(t, slot, cfgs, 0)
	stop := make(chan struct{})
	done := writers(t, hub.dsn, 2, 9, stop, 2*time.Millisecond)
	time.Sleep(time.Second)
	if err := both[0].stop(t); err != nil {
		t.Fatal(err)
	}
	one := startFanout(t, slot, cfgs[:1], 0)
	waitFor(t, "feed 0:2 given its own slot and no longer recorded as reading the shared one", func() bool {
		return slotExists(t, hub.dsn, schema.Slot(hub.db, spokes[1].id)) && !isMember(t, hub, "0:2")
	})
	time.Sleep(2 * time.Second)
	thenAllFeeds(t, one[0], stop, done, hub, spokes, slot, cfgs)
}

// Two fanouts on one shared slot (two processes, say `votr sink --feed 0:*`
// run twice, one with an older topology lacking feed 0:2) never stream at
// the same time: the second waits while the first holds the slot's lock,
// then gives 0:2, which it is not given, its own slot before it streams.
// Every hub transaction is applied once in each spoke. (Found by review:
// taking turns on the slot, 0:2 applied 460 of 6,737.)
func TestFanoutsTakeTurnsOnASharedSlot(t *testing.T) {
	hub, spokes, slot, cfgs := scriptlessHubFeeds(t)
	first := startFanout(t, slot, cfgs, 0)
	stop := make(chan struct{})
	done := writers(t, hub.dsn, 2, 11, stop, 2*time.Millisecond)
	waitFor(t, "the first fanout applying", func() bool { return first[0].s.Status().Txns > 20 })
	second := startFanout(t, slot, cfgs[:1], 0)
	// The shared slot's walsender ended now and then, as sessions end on
	// errors: each time the slot is free for a moment.
	for range 10 {
		time.Sleep(300 * time.Millisecond)
		pgtest.Exec(t, hub.dsn, fmt.Sprintf(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '%s' AND active`, slot))
	}
	time.Sleep(time.Second)
	if n := second[0].s.Status().Txns; n != 0 {
		t.Errorf("the second fanout applied %d transactions while the first held the shared slot", n)
	}
	if err := first[0].stop(t); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second fanout applying once the first stopped", func() bool { return second[0].s.Status().Txns > 0 })
	if !slotExists(t, hub.dsn, schema.Slot(hub.db, spokes[1].id)) || isMember(t, hub, "0:2") {
		t.Errorf("feed 0:2, which the second fanout is not given, has no slot of its own or is still recorded as reading the shared one")
	}
	time.Sleep(time.Second)
	thenAllFeeds(t, second[0], stop, done, hub, spokes, slot, cfgs)
}

// thenAllFeeds stops the writers, lets part (a fanout of some of cfgs)
// catch up and stops it, then runs a fanout of all of cfgs and checks that
// each spoke applied every hub transaction exactly once.
func thenAllFeeds(t *testing.T, part *running, stop chan struct{}, done func() int64, hub region, spokes []region, slot string, cfgs []Config) {
	t.Helper()
	close(stop)
	n := done()
	waitCaughtUp(t, part, hub.dsn, time.Minute)
	if err := part.stop(t); err != nil {
		t.Fatal(err)
	}
	checkAppliedOnce(t, startFanout(t, slot, cfgs, 0), hub, spokes, n)
}

// isMember reports whether feed is recorded as reading a shared slot of src.
func isMember(t *testing.T, src region, feed string) bool {
	return queryInt(t, src.dsn, `SELECT count(*) FROM votr.slot_members WHERE feed = $1`, feed) == 1
}

// scriptlessHubFeeds makes a hub and two spokes on one server, a shared
// slot at the hub, and the configurations (no script: a transaction
// applied twice conflicts) of the hub's two outbound feeds, each with its
// checkpoint.
func scriptlessHubFeeds(t *testing.T) (hub region, spokes []region, slot string, cfgs []Config) {
	t.Helper()
	rs := regionsOnOneServer(t, []int{0, 1, 2})
	hub, spokes = rs[0], rs[1:]
	slot = createSharedSlot(t, hub)
	for _, sp := range spokes {
		cfg := feedConfig(t, hub, sp, nil, options(20, 1000, 0))
		addCheckpoint(t, cfg)
		joinShared(t, cfg, slot)
		cfgs = append(cfgs, cfg)
	}
	return hub, spokes, slot, cfgs
}

// createSharedSlot makes the slot that src's outbound feeds share, as
// apply does: before their checkpoints.
func createSharedSlot(t *testing.T, src region) string {
	t.Helper()
	slot := schema.SharedSlot(src.db)
	pgtest.Exec(t, src.dsn, fmt.Sprintf("SELECT pg_create_logical_replication_slot('%s', 'pgoutput')", slot))
	return slot
}

// joinShared records cfg's feed as reading slot (a handover's record).
func joinShared(t *testing.T, cfg Config, slot string) {
	t.Helper()
	conn := connect(t, cfg.SourceDSN)
	defer conn.Close(context.Background())
	if err := SlotMembersIn(conn).Join(context.Background(), schema.FeedName(cfg.SourceID, cfg.TargetID), slot); err != nil {
		t.Fatal(err)
	}
}

// holdRows locks every totals row of a region from a client's open
// transaction until release is called.
func holdRows(t *testing.T, dsn string) (release func()) {
	t.Helper()
	ctx := context.Background()
	holder := connect(t, dsn)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT * FROM totals FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		holder.Close(ctx)
	}
}

func slotExists(t *testing.T, dsn, slot string) bool {
	return queryInt(t, dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slot) == 1
}

// culprit names the feed whose own error ended a session of several, and
// counts its failures in a row from the first: any session that ends
// otherwise starts every count again.
func TestCulpritCountsOneFeedsFailuresInARow(t *testing.T) {
	a, b := &Sink{feed: "0:1"}, &Sink{feed: "0:2"}
	two := []*Sink{a, b}
	errB := &feedError{s: b, err: errors.New("connection refused")}
	tests := []struct {
		name    string
		sinks   []*Sink
		errs    []error
		want    *Sink
		failing []*Sink // sinks counted as failing afterwards
	}{
		{"one feed's error", two, []error{errB}, b, []*Sink{b}},
		{"again", two, []error{errB, errB}, b, []*Sink{b}},
		{"the stream's error", two, []error{errB, errors.New("source: connection refused")}, nil, nil},
		{"the other feed's error", two, []error{errB, &feedError{s: a, err: errors.New("boom")}}, a, []*Sink{a}},
		{"wrapped", two, []error{fmt.Errorf("session: %w", errB)}, b, []*Sink{b}},
		{"a session of one", []*Sink{b}, []error{errB}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			failing := map[*Sink]time.Time{}
			var got *Sink
			var first time.Time
			for i, err := range tt.errs {
				got = culprit(err, tt.sinks, failing)
				if i == 0 {
					first = failing[b]
				}
			}
			if got != tt.want {
				t.Errorf("culprit %v, want %v", got, tt.want)
			}
			if len(failing) != len(tt.failing) {
				t.Errorf("%d feeds counted as failing, want %d", len(failing), len(tt.failing))
			}
			for _, s := range tt.failing {
				if _, ok := failing[s]; !ok {
					t.Errorf("feed %s not counted as failing", s.feed)
				}
			}
			if s := tt.want; s == b && len(tt.errs) > 1 && !failing[b].Equal(first) {
				t.Errorf("a second failure in a row restarted feed %s's count", s.feed)
			}
		})
	}
}

// newFanout makes new sinks of cfgs and a Fanout of them through slot.
func newFanout(t testing.TB, slot string, cfgs []Config) (*Fanout, []*Sink) {
	t.Helper()
	var sinks []*Sink
	for _, cfg := range cfgs {
		s, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		sinks = append(sinks, s)
	}
	f, err := NewFanout(slot, sinks...)
	if err != nil {
		t.Fatal(err)
	}
	return f, sinks
}

// startFanout runs new sinks of cfgs through one slot, detaching a feed
// whose own failures hold the others back for detachAfter (0: never); each
// is returned as running, and stopping any stops them all.
func startFanout(t testing.TB, slot string, cfgs []Config, detachAfter time.Duration) []*running {
	t.Helper()
	f, sinks := newFanout(t, slot, cfgs)
	f.WithDetachAfter(detachAfter)
	f.rejoinEvery = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var rs []*running
	for _, s := range sinks {
		rs = append(rs, &running{s: s, cancel: cancel, done: done})
	}
	t.Cleanup(func() { rs[0].stop(t) })
	return rs
}

// NewFanout takes feeds that can share a slot, and says why others cannot.
func TestNewFanoutRefuses(t *testing.T) {
	cfg := func(src, dst int) Config {
		return Config{SourceID: src, TargetID: dst, SourceDB: fmt.Sprintf("votr_%d", src), TargetDB: fmt.Sprintf("votr_%d", dst),
			SourceDSN: fmt.Sprintf("postgres:///votr_%d", src), TargetDSN: fmt.Sprintf("postgres:///votr_%d", dst),
			Options: DefaultOptions()}
	}
	sink := func(c Config) *Sink {
		s, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	discard := cfg(0, 2)
	discard.Discard = true
	tests := []struct {
		name  string
		slot  string
		sinks []*Sink
		want  string // "" for no error
	}{
		{"two outbound feeds", "votr_0_out", []*Sink{sink(cfg(0, 1)), sink(cfg(0, 2))}, ""},
		{"one feed", "votr_0_out", []*Sink{sink(cfg(0, 1))}, ""},
		{"none", "votr_0_out", nil, "no feeds"},
		{"bad slot name", "Votr-out", []*Sink{sink(cfg(0, 1))}, "not valid"},
		{"different sources", "votr_0_out", []*Sink{sink(cfg(0, 1)), sink(cfg(2, 1))}, "share their source"},
		{"a feed twice", "votr_0_out", []*Sink{sink(cfg(0, 1)), sink(cfg(0, 1))}, "given twice"},
		{"a discarding sink", "votr_0_out", []*Sink{sink(cfg(0, 1)), sink(discard)}, "discards"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewFanout(tt.slot, tt.sinks...)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
		})
	}
}
