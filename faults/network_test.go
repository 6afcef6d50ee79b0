package faults_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/faultproxy"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/runner"
	"github.com/votr-dev/votr/sink"
)

// Spoke 1 reaches the hub through a fault-injecting proxy: every connection
// of its two feeds to the hub's server (the target of 1:0, the source of
// 0:1) goes through it, while spoke 2 reaches the hub directly. The link
// first gets slow (latency both ways), then is cut for 10 s and healed. The
// cut spoke's feeds show the outage (not connected, the error, a growing
// slot lag), spoke 2's feeds keep flowing, and the run converges once the
// link is back. Then the link becomes a black hole (a silent partition),
// which the cut spoke's feeds notice by their unanswered monitors.
func TestNetworkFaults(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	srv := startServers(t, 3)
	hub, s1, s2 := srv[0], srv[1], srv[2]
	proxy, err := faultproxy.New("127.0.0.1:" + strconv.Itoa(hub.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	dir := t.TempDir()
	top := topo{hub: connURL(hub), spokes: []spoke{{id: 1, connect: connURL(s1)}, {id: 2, connect: connURL(s2)}},
		extra: "workload:\n  interval: 0s\n"}.load(t, dir)
	out := &testlog.Buffer{}
	sinks := map[string]*sink.Sink{}
	t.Cleanup(func() {
		if t.Failed() {
			for name, s := range sinks {
				t.Logf("feed %s: %+v", name, s.Status())
			}
			t.Logf("log:\n%s", out)
		}
	})
	state := filepath.Join(dir, "state")
	if _, err := newRunner(state, out, nil).Apply(ctx, top, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}

	// The sinks run here (apply --no-sinks), so that spoke 1's can be
	// given the proxy as the hub's address.
	hubVia := map[int]string{1: strings.Replace(hub.DSN("votr_0"), "127.0.0.1:"+strconv.Itoa(hub.Port()), proxy.Addr(), 1) + "&connect_timeout=3", 2: hub.DSN("votr_0")}
	spokeDSN := map[int]string{1: s1.DSN("votr_1"), 2: s2.DSN("votr_2")}
	sinkCtx, stopSinks := context.WithCancel(ctx)
	var sinksDone sync.WaitGroup
	defer func() { stopSinks(); sinksDone.Wait() }()
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	for _, f := range top.Feeds() {
		sp := f.Source.ID
		cfg := sink.Config{SourceID: f.Source.ID, TargetID: f.Target.ID, SourceDB: f.Source.Database, TargetDB: f.Target.Database,
			Program: top.Program, Options: top.Sink, Logger: log}
		if sp == 0 {
			sp = f.Target.ID
			cfg.SourceDSN, cfg.TargetDSN = hubVia[sp], spokeDSN[sp]
		} else {
			cfg.SourceDSN, cfg.TargetDSN = spokeDSN[sp], hubVia[sp]
		}
		s, err := sink.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		sinks[f.String()] = s
		sinksDone.Go(func() {
			if err := s.Run(sinkCtx); err != nil {
				t.Errorf("sink %s stopped: %v", f, err)
			}
		})
	}

	type applied struct {
		res *runner.ApplyResult
		err error
	}
	done := make(chan applied, 1)
	go func() {
		res, err := newRunner(state, out, nil).Apply(ctx, top, &runner.RunOptions{Duration: 48 * time.Second, NoSinks: true, RateLimit: 25, StatusEvery: time.Second})
		done <- applied{res, err}
	}()
	waitFor(t, time.Minute, "both spokes' workers", func() bool { return out.Count("casting ballots") >= 2 })
	start := time.Now()
	at := func(d time.Duration, what string) {
		time.Sleep(time.Until(start.Add(d)))
		t.Logf("%5.1fs: %s", time.Since(start).Seconds(), what)
	}
	slotLag := func() int64 {
		return pgtestInt(t, s1.DSN("votr_1"), `SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'votr_1_to_0'`)
	}

	at(2*time.Second, "latency 20ms each way on spoke 1's link")
	proxy.SetLatency(faultproxy.ToServer, 20*time.Millisecond)
	proxy.SetLatency(faultproxy.ToClient, 20*time.Millisecond)
	slow := sinks["1:0"].Status().Rows
	at(6*time.Second, "latency off")
	proxy.SetLatency(faultproxy.ToServer, 0)
	proxy.SetLatency(faultproxy.ToClient, 0)
	if got := sinks["1:0"].Status().Rows; got <= slow {
		t.Errorf("feed 1:0 applied nothing over a slow link (%d rows before, %d after)", slow, got)
	}

	at(7*time.Second, "link cut")
	proxy.Cut()
	applied2 := sinks["2:0"].Status().AppliedLSN
	at(10*time.Second, "link still cut: status")
	lagEarly := slotLag()
	for _, name := range []string{"1:0", "0:1"} {
		st := sinks[name].Status()
		if st.Connected || st.LastError == "" {
			t.Errorf("feed %s during the cut: connected %v, last error %q; want disconnected with the error", name, st.Connected, st.LastError)
		}
		t.Logf("feed %s during the cut: %q", name, st.LastError)
	}
	at(15*time.Second, "link still cut: lag")
	if lagLate := slotLag(); lagLate <= lagEarly {
		t.Errorf("the slot lag of feed 1:0 did not grow during the cut: %d then %d bytes", lagEarly, lagLate)
	} else {
		t.Logf("slot lag of feed 1:0 grew from %d to %d bytes during the cut", lagEarly, lagLate)
	}
	if st := sinks["2:0"].Status(); !st.Connected || st.AppliedLSN <= applied2 {
		t.Errorf("feed 2:0 stalled while only spoke 1's link was cut: %+v", st)
	}
	at(17*time.Second, "link healed")
	if err := proxy.Heal(); err != nil {
		t.Fatal(err)
	}
	// Resumed, not only connected: a session that goes silent before it
	// applies anything belongs to the same outage, whose later errors are
	// logged at debug level only.
	waitFor(t, 30*time.Second, "spoke 1's feeds to resume", func() bool {
		return out.Count(`msg="feed resumed" feed=1:0`) >= 1 && out.Count(`msg="feed resumed" feed=0:1`) >= 1
	})
	t.Logf("%5.1fs: spoke 1's feeds resumed", time.Since(start).Seconds())

	// A silent partition: packets are dropped, nothing is closed. The
	// sinks notice it by their monitors' unanswered questions, not by
	// TCP (minutes), and show the feeds disconnected.
	at(21*time.Second, "black hole")
	proxy.Blackhole()
	waitFor(t, 90*time.Second, "spoke 1's feeds to notice the black hole", func() bool {
		return !sinks["1:0"].Status().Connected && !sinks["0:1"].Status().Connected &&
			out.Count("the target did not answer for") >= 1 && out.Count("the source did not answer for") >= 1
	})
	for _, name := range []string{"1:0", "0:1"} {
		st := sinks[name].Status()
		t.Logf("%5.1fs: feed %s in the black hole: connected %v, last error %q", time.Since(start).Seconds(), name, st.Connected, st.LastError)
	}
	if st := sinks["2:0"].Status(); !st.Connected {
		t.Errorf("feed 2:0 disconnected while only spoke 1's link was a black hole: %+v", st)
	}
	if err := proxy.Heal(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%5.1fs: healed", time.Since(start).Seconds())
	waitFor(t, 90*time.Second, "spoke 1's feeds to reconnect after the black hole", func() bool {
		return sinks["1:0"].Status().Connected && sinks["0:1"].Status().Connected
	})

	a := <-done
	if a.err != nil {
		t.Fatalf("apply: %v\n%s", a.err, out)
	}
	run := a.res.Run
	if !run.OK || !run.CaughtUp || run.Violations != 0 {
		t.Fatalf("run not OK (caught up %v, violations %d, problems %v):\n%s", run.CaughtUp, run.Violations, run.Report.Problems(), out)
	}
	assertConverged(t, []regionDB{{"hub", hub.DSN("votr_0")}, {"spoke 1", s1.DSN("votr_1")}, {"spoke 2", s2.DSN("votr_2")}}, run.Committed)
	if st := proxy.Stats(); st.Accepted < 4 {
		t.Errorf("only %d connections went through the proxy: the test did not route spoke 1's feeds through it", st.Accepted)
	}
}
