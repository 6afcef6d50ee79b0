package runner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/report"
	"github.com/votr-dev/votr/ui"
)

// What the web view (Options.UI) is fed: a source the ui package calls
// only while a page watches, at most a few times a second. Its live
// figures come from memory (the sinks' and workers' counters) and one
// cheap query per region (sum of totals, one row per candidate); the
// convergence report, which reads every ballot for its digests, is read
// again at most every uiReportEvery, and less often when it takes long
// (see reportCache).
const uiReportEvery = 3 * time.Second

// reportCache holds the report the web view shows during a run or a check,
// read again when it is due: after uiReportEvery, or 20 times as long as
// the last reading took, whichever is later, so that its cost stays a
// small fraction of the servers' time however many ballots there are.
type reportCache struct {
	rep      *report.Report
	at, next time.Time
}

func (c *reportCache) get(ctx context.Context, read func(context.Context) (*report.Report, error)) (*report.Report, time.Time) {
	now := time.Now()
	if c.rep == nil || !now.Before(c.next) {
		if rep, err := read(ctx); err == nil {
			c.rep, c.at = rep, now
		}
		c.next = now.Add(max(uiReportEvery, 20*time.Since(now)))
	}
	return c.rep, c.at
}

// uiFeed is a run as the web view shows it.
type uiFeed struct {
	r       *Runner
	rs      *runSet
	started time.Time
	drainAt atomic.Pointer[time.Time]

	// mu guards what follows: the web view reads the status while the run
	// takes its last readings.
	mu     sync.Mutex
	rep    reportCache
	rates  rateMeter
	feedTx rateMeter // rows per feed, for sinks that run elsewhere
	// caughtUp is the live reading taken when the drain ended, before the
	// sinks stopped: the final status shows the feeds as they finished.
	caughtUp *ui.Live
}

// metricsOnUI also serves the run's registry at /metrics on the web view's
// listener when metrics are asked for, and returns the address the
// metrics listener must still open: none when it is the web view's.
func (r *Runner) metricsOnUI(addr string, registry *prometheus.Registry) string {
	if r.opts.UI == nil || addr == "" {
		return addr
	}
	r.opts.UI.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	if u, err := url.Parse(r.opts.UI.URL()); err == nil && sameAddr(u.Host, addr) {
		r.log.Info("serving metrics on the web view's listener", "url", u.JoinPath("metrics").String())
		return ""
	}
	return addr
}

func sameAddr(a, b string) bool {
	ta, err1 := net.ResolveTCPAddr("tcp", a)
	tb, err2 := net.ResolveTCPAddr("tcp", b)
	return err1 == nil && err2 == nil && ta.Port == tb.Port && ta.IP.Equal(tb.IP)
}

// showRun points the web view at the run (nil without a web view).
func (r *Runner) showRun(rs *runSet, started time.Time) *uiFeed {
	if r.opts.UI == nil {
		return nil
	}
	u := &uiFeed{r: r, rs: rs, started: started}
	r.opts.UI.SetSource(u.status)
	return u
}

// draining says the workers have stopped.
func (u *uiFeed) draining(at time.Time) {
	if u != nil {
		u.drainAt.Store(&at)
	}
}

// drained takes the last live reading while the sinks still run.
func (u *uiFeed) drained(ctx context.Context) {
	if u == nil {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	t, regions, feeds := u.rs.snapshot()
	live := u.live(ctx, t, regions, feeds, time.Now())
	u.caughtUp = &live
}

// done shows the run's end for good: the final report and verdict.
func (u *uiFeed) done(ctx context.Context, res *RunResult) {
	if u == nil || res.Report == nil {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	st := (&ui.Status{Elapsed: res.Elapsed.Seconds()}).WithReport(res.Report)
	if u.caughtUp != nil {
		st.Live = *u.caughtUp
	} else {
		t, regions, feeds := u.rs.snapshot()
		st.Live = u.live(ctx, t, regions, feeds, time.Now())
	}
	st.Phase, st.Final = ui.PhaseDone, true
	st.Headline = fmt.Sprintf("the run ended: workers committed %d transactions in %s; the feeds %s in %s",
		res.Txns, res.Elapsed.Round(time.Second), map[bool]string{true: "caught up", false: "did NOT catch up"}[res.CaughtUp],
		res.Drain.Round(time.Millisecond))
	if res.Violations > 0 || len(res.Errors) > 0 {
		// Not in the report (it checks the final state only): say it.
		if res.Violations > 0 {
			st.Problems = append(st.Problems, fmt.Sprintf("the validation loops saw %d invariant violation(s) during the run", res.Violations))
		}
		st.Problems = append(st.Problems, res.Errors...)
		st.OK = false
	}
	u.r.opts.UI.SetSource(func(context.Context) *ui.Status { return st })
}

// status reads the run now.
func (u *uiFeed) status(ctx context.Context) *ui.Status {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, regions, feeds := u.rs.snapshot()
	now := time.Now()
	st := &ui.Status{Phase: ui.PhaseRunning, Elapsed: now.Sub(u.started).Seconds(),
		Headline: fmt.Sprintf("running for %s", now.Sub(u.started).Round(time.Second))}
	if d := u.drainAt.Load(); d != nil {
		st.Phase = ui.PhaseDraining
		st.Elapsed = d.Sub(u.started).Seconds()
		st.Headline = fmt.Sprintf("workers stopped after %s; draining the feeds (at most %s)", d.Sub(u.started).Round(time.Second), t.DrainDelay)
	}
	rep, _ := u.rep.get(ctx, func(ctx context.Context) (*report.Report, error) { return u.r.gather(ctx, t, regions, feeds) })
	st.WithReport(rep)
	st.Live = u.live(ctx, t, regions, feeds, now)
	return st
}

// live reads the regions' ballots and the feeds' figures now.
func (u *uiFeed) live(ctx context.Context, t *config.Topology, regions []*regionRun, feeds []*feedRun, now time.Time) ui.Live {
	live := ui.Live{At: now.UTC()}
	qctx, cancel := context.WithTimeout(ctx, 800*time.Millisecond)
	defer cancel()
	for _, rr := range regions {
		lr := ui.LiveRegion{ID: rr.reg.ID, Label: rr.reg.Label(), Hub: rr.reg.ID == t.Hub.ID,
			Committed: rr.stats.Committed()[rr.reg.ID], Violations: rr.vstat.Violations.Load()}
		lr.Ballots = u.rates.last(rr.reg.ID)
		var n int64
		if err := rr.pool.QueryRow(qctx, `SELECT coalesce(sum(total), 0)::bigint FROM public.totals`).Scan(&n); err == nil {
			lr.Ballots = n
		}
		lr.BallotsPerSec = u.rates.rate(rr.reg.ID, lr.Ballots, now)
		live.Regions = append(live.Regions, lr)
	}
	for _, f := range feeds {
		lf := ui.LiveFeed{Name: f.feed.String(), Source: f.feed.Source.ID, Target: f.feed.Target.ID, LagBytes: -1}
		if f.sink != nil {
			s := f.sink.Status()
			lf.Health = ui.HealthOf(s.Connected, s.Lag, s.LagBytes)
			lf.LagMS, lf.LagBytes = s.Lag.Milliseconds(), s.LagBytes
			lf.RowsPerSec, lf.Rows, lf.Conflicts, lf.DeadLettered = s.RowsPerSec, s.Rows, s.Conflicts, s.DeadLettered
			if !s.Connected {
				lf.LastError = s.LastError
			}
		} else {
			// The sink runs elsewhere (--no-sinks): what the report says.
			lf = feedFromReport(u.rep.rep, lf, &u.feedTx, now)
		}
		live.Feeds = append(live.Feeds, lf)
	}
	return live
}

// ServeCheck shows `votr check` on the web view until ctx ends: the report
// is read again every few seconds while a page watches, and its figures
// stand in for the live ones (read-only: nothing runs). Managed servers
// that are stopped are started to be read and stopped again at the end.
func (r *Runner) ServeCheck(ctx context.Context, t *config.Topology) error {
	if r.opts.UI == nil {
		return nil
	}
	stop, err := r.startToRead(ctx, t)
	if err != nil {
		return err
	}
	defer stop()
	regions, feeds, err := r.runTargets(ctx, t)
	if err != nil {
		return err
	}
	var (
		cache            reportCache
		ballots, feedTxn rateMeter
	)
	r.opts.UI.SetSource(func(ctx context.Context) *ui.Status {
		now := time.Now()
		rep, repAt := cache.get(ctx, func(ctx context.Context) (*report.Report, error) { return r.gather(ctx, t, regions, feeds) })
		st := (&ui.Status{Phase: ui.PhaseCheck, Headline: "votr check: read-only, the databases are read again every few seconds"}).WithReport(rep)
		st.Live.At = now.UTC()
		if rep == nil {
			return st
		}
		for _, reg := range rep.Regions {
			st.Live.Regions = append(st.Live.Regions, ui.LiveRegion{ID: reg.ID, Label: reg.Label, Hub: reg.ID == rep.HubID,
				Ballots: reg.Ballots, BallotsPerSec: ballots.rate(reg.ID, reg.Ballots, repAt), Violations: int64(len(reg.Violations))})
		}
		for _, f := range rep.Feeds {
			st.Live.Feeds = append(st.Live.Feeds, feedFromReport(rep, ui.LiveFeed{Name: f.Name, Source: f.SourceID, Target: f.TargetID, LagBytes: -1}, &feedTxn, repAt))
		}
		return st
	})
	<-ctx.Done()
	return nil
}

// feedFromReport fills a feed's live figures from what a report read: its
// slot (active or not, WAL to process) and its checkpoint.
func feedFromReport(rep *report.Report, lf ui.LiveFeed, rows *rateMeter, at time.Time) ui.LiveFeed {
	lf.Health = ui.HealthStopped
	if rep == nil {
		return lf
	}
	for _, f := range rep.Feeds {
		if f.Name != lf.Name {
			continue
		}
		lf.LagBytes = f.LagBytes
		lf.DeadLettered = f.PendingDeadLetters
		var lag time.Duration
		if c := f.Checkpoint; c != nil {
			lf.Rows, lf.Conflicts = c.Rows, c.Conflicts
			if c.SourceCommit != nil && c.AppliedAt != nil {
				lag = c.AppliedAt.Sub(*c.SourceCommit)
				lf.LagMS = lag.Milliseconds()
			}
		}
		lf.RowsPerSec = rows.rate(f.SourceID*1_000_000+f.TargetID, lf.Rows, at)
		lf.Health = ui.HealthOf(f.SlotActive, lag, f.LagBytes)
		if f.SourceErr != "" {
			lf.LastError = f.SourceErr
		}
	}
	return lf
}

// rateMeter turns successive readings of counters into rates per second,
// each over the readings of the last rateWindow (one reading to the next
// is too jumpy: ballots arrive in transactions and feed batches).
type rateMeter struct {
	seen map[int][]reading
}

const rateWindow = 3 * time.Second

type reading struct {
	n  int64
	at time.Time
}

// rate records counter key's value n read at `at` and returns its growth
// per second over the window.
func (m *rateMeter) rate(key int, n int64, at time.Time) float64 {
	if m.seen == nil {
		m.seen = map[int][]reading{}
	}
	rs := m.seen[key]
	if len(rs) == 0 || at.After(rs[len(rs)-1].at) {
		rs = append(rs, reading{n, at})
	}
	for len(rs) > 2 && at.Sub(rs[1].at) >= rateWindow {
		rs = rs[1:]
	}
	m.seen[key] = rs
	first, last := rs[0], rs[len(rs)-1]
	if dt := last.at.Sub(first.at).Seconds(); dt > 0 {
		return max(0, float64(last.n-first.n)/dt)
	}
	return 0
}

// last is the counter's latest reading (0 before any).
func (m *rateMeter) last(key int) int64 {
	if rs := m.seen[key]; len(rs) > 0 {
		return rs[len(rs)-1].n
	}
	return 0
}

// startToRead starts the topology's managed servers that are stopped, for
// reading them (check needs their data; the log says which it starts and
// why), each on its recorded port, and returns what stops them again.
func (r *Runner) startToRead(ctx context.Context, t *config.Topology) (stop func(), err error) {
	var started []*server
	stop = func() {
		for _, s := range started {
			ctx := context.WithoutCancel(ctx)
			// Another command may have come to use it meanwhile (an
			// apply reloaded to add a spoke there, a sink): it stays up.
			if n, err := othersOn(ctx, s.managed.DSN("postgres")); err != nil || n > 0 {
				r.log.Info("managed server started to be read is left running: other sessions use it now", "server", s.key, "sessions", n, "err", err)
				continue
			}
			s.managed.Stop(ctx)
		}
	}
	srvs, err := r.servers(t.Regions())
	if err != nil {
		return nil, err
	}
	for _, s := range srvs {
		if s.managed == nil || !s.managed.Exists() || s.managed.Running(ctx) {
			continue
		}
		// Started on its own port or not at all: a read never moves a
		// server (a port taken meanwhile is an error naming it).
		port, taken := s.managed.PortInUse(ctx)
		if taken {
			stop()
			return nil, portTakenError(s.key, port, t.Path)
		}
		r.log.Warn("managed server is stopped: starting it to read its regions; it is stopped again afterwards", "server", s.key, "port", port)
		s.managed = localpg.New(localpg.Options{Dir: s.dir, BinDir: r.opts.BinDir, Logger: r.log, Port: port})
		if err := s.managed.Start(ctx); err != nil {
			stop()
			if errors.Is(err, localpg.ErrPortInUse) {
				return nil, portTakenError(s.key, port, t.Path)
			}
			return nil, fmt.Errorf("server %s: start it to read it: %w", s.key, err)
		}
		started = append(started, s)
	}
	return stop, nil
}

// othersOn counts the client sessions and walsenders of the server at dsn
// other than the one that asks.
func othersOn(ctx context.Context, dsn string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_stat_activity
		WHERE backend_type IN ('client backend', 'walsender') AND pid <> pg_catalog.pg_backend_pid()`).Scan(&n)
	return n, err
}

// portTakenError is the refusal of a read-only command to start a stopped
// managed server whose recorded port another program now listens on: only
// apply may move a server, since that changes the URL it is reached by.
func portTakenError(server string, port int, path string) error {
	return fmt.Errorf("managed server %s is stopped and its port %d is now used by another program; a read-only command does not move a server, so nothing was started or changed. "+
		"Stop the program listening on port %d and run this command again, or run `votr apply %s`, which starts the server on a new free port and records it",
		server, port, port, path)
}
