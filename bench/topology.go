package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/report"
	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/sink"
	"github.com/votr-dev/votr/workload"
)

// A topology for the steady-state and scaling parts: a hub and spokes, by
// default all databases on ONE PostgreSQL server (the layout of `connect:
// local`, the default a user gets); -layout per-region gives each region a
// server of its own, as separate clusters would. On 2 cores one server
// costs less in background processes (one WAL writer, checkpointer, ...),
// and commits of all regions share WAL flushes; but each of its
// walsenders reads the WAL of every region, so their work grows with the
// square of the regions (BENCHMARKS.md). Every feed has its own sink
// (package sink) in this process, as `votr apply` runs them.
//
// Lag is measured with probes: now and then a spoke commits a one-ballot
// vote whose ballot id starts with ffffffff. A bench-only deferred
// constraint trigger (ENABLE ALWAYS, so it also fires for the sinks'
// writes) on every region's ballots stamps such a ballot with
// clock_timestamp() into an unlogged table as the writing transaction
// commits: deferred triggers run at the commit, after every statement of
// the transaction. So a probe's commit on its spoke, on the hub and on the
// other spokes are timed with the same clock. One poller per region
// collects the stamps (it deletes what it reads); how often it polls does
// not change the times. A stamp precedes its commit record; at the origin
// that commit also waits for its WAL flush, so a hop reads at most one WAL
// flush longer than it is.
//
// An earlier version sent a NOTIFY instead. A committing transaction that
// notifies holds a lock shared by the whole server until its commit is
// done, so every commit carrying a probe queued behind the others, with the
// sinks' row locks held meanwhile: with 8 spokes that queue, not the
// replication, set the lag. Commit timestamps would avoid it but do not
// time the hop: a sink's transaction carries its source's commit time as
// its replication origin's timestamp, and track_commit_timestamp records
// that time, not the target's commit.

// layout is where a topology's regions live (the -layout flag).
type layout string

const (
	oneServer layout = "one-server"
	perRegion layout = "per-region"
)

func (l *layout) String() string { return string(*l) }

func (l *layout) Set(s string) error {
	switch layout(s) {
	case oneServer, perRegion:
		*l = layout(s)
		return nil
	}
	return fmt.Errorf("unknown layout %q: use %s or %s", s, oneServer, perRegion)
}

// where says where the regions live, for the report's headings.
func (l layout) where() string {
	if l == perRegion {
		return "each region on its own server"
	}
	return "all on one server"
}

var probeTrigger = []string{
	`CREATE SCHEMA votr_bench`,
	`CREATE UNLOGGED TABLE votr_bench.arrivals (ballot uuid NOT NULL, at timestamptz NOT NULL)`,
	`CREATE FUNCTION votr_bench.stamp() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO votr_bench.arrivals VALUES (NEW.ballot, clock_timestamp());
		RETURN NULL;
	END $$`,
	`CREATE CONSTRAINT TRIGGER votr_bench_probe AFTER INSERT ON public.ballots
		DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
		WHEN (NEW.ballot >= 'ffffffff-0000-0000-0000-000000000000'::uuid)
		EXECUTE FUNCTION votr_bench.stamp()`,
	`ALTER TABLE public.ballots ENABLE ALWAYS TRIGGER votr_bench_probe`,
}

// probePoll is how often each region's stamps are collected.
const probePoll = 50 * time.Millisecond

type topology struct {
	env  *env
	name string
	// servers holds the topology's servers, the hub's first: one, or one
	// per region.
	servers []*localpg.Server
	hub     region
	spokes  []region
	feeds   []*feed
	cands   []schema.Candidate

	stats  *workload.Stats // every window's workers; cumulative
	probes *probeLog
	// deadlocks0 is the server's deadlock count before the sinks started.
	deadlocks0 int64

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// feed is one running sink.
type feed struct {
	name     string
	src, dst region
	sink     *sink.Sink
	err      chan error
}

func (t *topology) regions() []region { return append([]region{t.hub}, t.spokes...) }

// startTopology builds the hub and n spokes on fresh servers (as e.layout
// says) and starts a sink for each of the 2n feeds and a probe listener
// for each region.
func startTopology(ctx context.Context, e *env, name string, n, candidates int) (*topology, error) {
	t := &topology{env: e, name: name, cands: schema.Candidates(candidates), stats: &workload.Stats{}, probes: newProbeLog()}
	if err := t.build(ctx, n, candidates); err != nil {
		t.dropServers()
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	t.cancel = cancel
	for _, f := range t.feeds {
		f.name = schema.FeedName(f.src.id, f.dst.id)
		var err error
		f.sink, err = sink.New(sink.Config{
			SourceID: f.src.id, TargetID: f.dst.id, SourceDB: f.src.db, TargetDB: f.dst.db,
			SourceDSN: f.src.dsn, TargetDSN: f.dst.dsn, Program: e.program, Options: sink.DefaultOptions(), Logger: e.log,
		})
		if err != nil {
			t.stop()
			return nil, err
		}
		f.err = make(chan error, 1)
		if !t.env.sharedHubSlot || f.src.id != t.hub.id {
			t.wg.Go(func() { f.err <- f.sink.Run(runCtx) })
		}
	}
	if t.env.sharedHubSlot {
		if err := t.runFanout(runCtx); err != nil {
			t.stop()
			return nil, err
		}
	}
	for _, r := range t.regions() {
		conn, err := connectBench(ctx, r.dsn)
		if err != nil {
			t.stop()
			return nil, fmt.Errorf("probe poller on %s: %w", r.db, err)
		}
		t.wg.Go(func() {
			defer conn.Close(context.Background())
			workload.Every(runCtx, probePoll, func() bool { return t.collectStamps(runCtx, conn, r.id) == nil })
		})
	}
	return t, nil
}

// slot is the slot feed f reads.
func (t *topology) slot(f *feed) string {
	if t.env.sharedHubSlot && f.src.id == t.hub.id {
		return schema.SharedSlot(t.hub.db)
	}
	return schema.Slot(f.src.db, f.dst.id)
}

// runFanout runs the hub's outbound feeds through the shared slot; when it
// stops, each of them reports why.
func (t *topology) runFanout(ctx context.Context) error {
	var out []*feed
	var sinks []*sink.Sink
	for _, f := range t.feeds {
		if f.src.id == t.hub.id {
			out = append(out, f)
			sinks = append(sinks, f.sink)
		}
	}
	fo, err := sink.NewFanout(schema.SharedSlot(t.hub.db), sinks...)
	if err != nil {
		return err
	}
	t.wg.Go(func() {
		err := fo.Run(ctx)
		for _, f := range out {
			f.err <- err
		}
	})
	return nil
}

// build makes the servers, the regions with their probe triggers, and
// each feed's slot and checkpoint row.
func (t *topology) build(ctx context.Context, n, candidates int) error {
	for id := 0; id <= n; id++ {
		srv, err := t.regionServer(ctx, id)
		if err != nil {
			return err
		}
		r, err := createRegion(ctx, srv, fmt.Sprintf("votr_%d", id), id, candidates)
		if err != nil {
			return err
		}
		if id == 0 {
			t.hub = r
		} else {
			t.spokes = append(t.spokes, r)
		}
	}
	for _, r := range t.regions() {
		if err := execSQL(ctx, r.dsn, probeTrigger...); err != nil {
			return fmt.Errorf("probe trigger in %s: %w", r.db, err)
		}
	}
	if t.env.sharedHubSlot {
		// Before the feeds' checkpoints, as apply creates a feed's slot.
		if err := createSlot(ctx, t.hub.dsn, schema.SharedSlot(t.hub.db)); err != nil {
			return err
		}
	}
	for _, s := range t.spokes {
		if err := createSlot(ctx, s.dsn, schema.Slot(s.db, t.hub.id)); err != nil {
			return err
		}
		if !t.env.sharedHubSlot {
			if err := createSlot(ctx, t.hub.dsn, schema.Slot(t.hub.db, s.id)); err != nil {
				return err
			}
		} else if err := execSQL(ctx, t.hub.dsn, fmt.Sprintf("INSERT INTO votr.slot_members (feed, slot) VALUES ('%s', '%s')",
			schema.FeedName(t.hub.id, s.id), schema.SharedSlot(t.hub.db))); err != nil {
			return err
		}
		if err := addFeed(ctx, t.hub.dsn, schema.FeedName(s.id, t.hub.id)); err != nil {
			return err
		}
		if err := addFeed(ctx, s.dsn, schema.FeedName(t.hub.id, s.id)); err != nil {
			return err
		}
		t.feeds = append(t.feeds, &feed{src: s, dst: t.hub}, &feed{src: t.hub, dst: s})
	}
	var err error
	if t.deadlocks0, err = t.serverDeadlocks(ctx); err != nil {
		return fmt.Errorf("deadlock count: %w", err)
	}
	return nil
}

// stop ends the sinks and listeners, adds the topology's deadlocks and
// sink lock retries to the run's tally, and removes the server.
func (t *topology) stop() {
	t.cancel()
	t.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if t.feeds != nil && t.feeds[len(t.feeds)-1].sink != nil { // the sinks were started
		t.settleStats(ctx)
		n, err := t.serverDeadlocks(ctx)
		if err != nil {
			t.env.contention.fail(t.name, err)
		} else {
			t.env.contention.add(t.name, n-t.deadlocks0, t.lockRetries())
		}
	}
	t.dropServers()
}

// regionServer is the server region id lives on: the topology's one
// server, or (per-region) a new one. A new server is started with room
// for 2 sessions per sink, the workers' pools, listeners and probes.
func (t *topology) regionServer(ctx context.Context, id int) (*localpg.Server, error) {
	if t.env.layout != perRegion && len(t.servers) > 0 {
		return t.servers[0], nil
	}
	name := t.name
	if t.env.layout == perRegion {
		name = fmt.Sprintf("%s-region-%d", t.name, id)
	}
	srv, err := t.env.lab.server(ctx, name)
	if srv != nil {
		t.servers = append(t.servers, srv)
	}
	if err != nil {
		return nil, err
	}
	if err := execSQL(ctx, srv.DSN("postgres"), `ALTER SYSTEM SET max_connections = 400`); err != nil {
		return nil, err
	}
	if err := srv.Restart(ctx, "fast"); err != nil {
		return nil, err
	}
	return srv, nil
}

// dropServers removes the topology's servers.
func (t *topology) dropServers() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range t.servers {
		_ = t.env.lab.drop(ctx, s)
	}
	t.servers = nil
}

// sinkFailure reports a sink that stopped on its own.
func (t *topology) sinkFailure() error {
	for _, f := range t.feeds {
		select {
		case err := <-f.err:
			f.err <- err
			return fmt.Errorf("sink of feed %s stopped: %v", f.name, err)
		default:
		}
	}
	return nil
}

// committed is, per region, the ballots committed there (workers and probes).
func (t *topology) committed() map[int]int64 {
	c := t.stats.Committed()
	if c == nil {
		c = map[int]int64{}
	}
	for id, n := range t.probes.committed() {
		c[id] += n
	}
	return c
}

// verify gathers the convergence report of every region and feed and
// returns its problems as an error.
func (t *topology) verify(ctx context.Context) error {
	var regions []report.RegionTarget
	for _, r := range t.regions() {
		regions = append(regions, report.RegionTarget{ID: r.id, DSN: r.dsn})
	}
	var feeds []report.FeedTarget
	for _, f := range t.feeds {
		feeds = append(feeds, report.FeedTarget{Name: f.name, SourceID: f.src.id, TargetID: f.dst.id,
			SourceDSN: f.src.dsn, TargetDSN: f.dst.dsn, Slot: t.slot(f)})
	}
	rep, err := report.Gather(ctx, regions, feeds, t.hub.id)
	if err != nil {
		return err
	}
	rep.Check(t.committed())
	if ps := rep.Problems(); len(ps) > 0 {
		return fmt.Errorf("regions do not check out: %v", ps)
	}
	return nil
}

// pace is how the spokes' workers cast ballots during a window.
type pace struct {
	label   string
	workers int     // per spoke
	rate    float64 // transactions per second per spoke; 0 = as fast as they can
	cfg     workload.Options
}

// capOf is the pace's cap for comparing search steps: none ranks above
// every cap.
func (p pace) capOf() float64 {
	if p.rate == 0 {
		return math.Inf(1)
	}
	return p.rate
}

// originalPace is the original demo's worker: the default shape (exactly
// 10 ballots per transaction over 1–10 candidates), then a 100 ms pause,
// one worker per spoke.
func originalPace() pace {
	return pace{label: "original pace", workers: 1, cfg: workloadConfig(100 * time.Millisecond)}
}

func workloadConfig(interval time.Duration) workload.Options {
	o := workload.DefaultOptions()
	o.Interval = interval
	return o
}

// runWorkers runs the pace on every spoke until ctx ends, and probes.
func (t *topology) runWorkers(ctx context.Context, p pace, probeEvery time.Duration) error {
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(t.spokes))
	for _, s := range t.spokes {
		cfg, err := pgxpool.ParseConfig(s.dsn)
		if err != nil {
			return err
		}
		cfg.MaxConns = int32(p.workers + 1)
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			return err
		}
		defer pool.Close()
		wg.Go(func() {
			if err := workload.Run(ctx, pool, s.id, p.workers, p.cfg, t.env.log, t.stats, workload.WithRateLimit(p.rate)); err != nil {
				errs <- err
			}
		})
		wg.Go(func() {
			if err := t.probe(ctx, s, probeEvery); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// probe commits a probe vote on spoke s every `every` until ctx ends.
func (t *topology) probe(ctx context.Context, s region, every time.Duration) error {
	conn, err := connectBench(ctx, s.dsn)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("probe on %s: %w", s.db, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rng := rand.New(rand.NewPCG(rand.Uint64(), uint64(s.id)))
	// Spokes probe out of step with each other.
	if !sleepCtx(ctx, time.Duration(rng.Int64N(int64(every)))) {
		return nil
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		if err := t.probeOnce(ctx, conn, s, rng); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// probeOnce commits one probe vote, retrying deadlocks and serialization
// failures (a sink applying into the spoke holds locks on totals rows).
func (t *topology) probeOnce(ctx context.Context, conn *pgx.Conn, s region, rng *rand.Rand) error {
	for {
		id := fmt.Sprintf("ffffffff-%04x-4%03x-8%03x-%012x", rng.IntN(1<<16), rng.IntN(1<<12), rng.IntN(1<<12), rng.Int64N(1<<48))
		cand := t.cands[rng.IntN(len(t.cands))].ID
		t.probes.sent(id, s.id)
		b := &pgx.Batch{}
		b.Queue(`UPDATE public.totals SET total = total + 1 WHERE candidate = $1`, cand)
		b.Queue(`INSERT INTO public.ballots (candidate, ballot) VALUES ($1, $2)`, cand, id)
		// Not cancelled by ctx: a probe that may have committed must be counted.
		err := conn.SendBatch(context.WithoutCancel(ctx), b).Close()
		t.probes.done(id, s.id, err == nil)
		var pe *pgconn.PgError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001"):
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		return fmt.Errorf("probe on %s: %w", s.db, err)
	}
}

// collectStamps takes the probe stamps committed in region since the last
// look into the probe log.
func (t *topology) collectStamps(ctx context.Context, conn *pgx.Conn, region int) error {
	rows, err := conn.Query(ctx, `DELETE FROM votr_bench.arrivals RETURNING ballot::text, at`)
	if err != nil {
		return err
	}
	var id string
	var at time.Time
	_, err = pgx.ForEachRow(rows, []any{&id, &at}, func() error {
		t.probes.seen(id, region, at)
		return nil
	})
	return err
}

// probeLog records when each probe ballot committed in each region.
type probeLog struct {
	mu      sync.Mutex
	probes  map[string]*probe
	bySpoke map[int]int64 // committed probe ballots per origin region
}

type probe struct {
	origin int
	sent   time.Time
	ok     bool
	seen   map[int]time.Time
}

func newProbeLog() *probeLog {
	return &probeLog{probes: map[string]*probe{}, bySpoke: map[int]int64{}}
}

func (l *probeLog) sent(id string, origin int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.probes[id] = &probe{origin: origin, sent: time.Now(), seen: map[int]time.Time{}}
}

func (l *probeLog) done(id string, origin int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ok {
		l.probes[id].ok = true
		l.bySpoke[origin]++
	} else {
		delete(l.probes, id)
	}
}

func (l *probeLog) seen(id string, region int, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p, ok := l.probes[id]; ok {
		if _, dup := p.seen[region]; !dup {
			p.seen[region] = at
		}
	}
}

func (l *probeLog) committed() map[int]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[int]int64{}
	for k, v := range l.bySpoke {
		out[k] = v
	}
	return out
}

// probeLags are lags measured by probes sent in [from, to).
type probeLags struct {
	spokeHub, spokeSpoke dist
	feed                 map[string]dist // "S:D" → that hop's lag
	sent, missing        int
}

func (l *probeLog) lags(from, to time.Time, hub int, spokes []region) probeLags {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := probeLags{feed: map[string]dist{}}
	for _, p := range l.probes {
		if !p.ok || p.sent.Before(from) || !p.sent.Before(to) {
			continue
		}
		out.sent++
		t0, ok := p.seen[p.origin]
		h, okHub := p.seen[hub]
		if !ok || !okHub {
			out.missing++
			continue
		}
		out.spokeHub = append(out.spokeHub, h.Sub(t0))
		out.feed[schema.FeedName(p.origin, hub)] = append(out.feed[schema.FeedName(p.origin, hub)], h.Sub(t0))
		for _, s := range spokes {
			if s.id == p.origin {
				continue
			}
			at, ok := p.seen[s.id]
			if !ok {
				out.missing++
				continue
			}
			out.spokeSpoke = append(out.spokeSpoke, at.Sub(t0))
			out.feed[schema.FeedName(hub, s.id)] = append(out.feed[schema.FeedName(hub, s.id)], at.Sub(h))
		}
	}
	return out
}

// connectBench connects the bench's own sessions, named so that session
// statistics can leave them out.
func connectBench(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = "votr-bench"
	return pgx.ConnectConfig(ctx, cfg)
}

// late counts the end-to-end arrivals of probes sent since from that are
// (or, not yet arrived at now, already are) later than bound: spoke→hub→
// spoke, or spoke→hub with only one spoke.
func (l *probeLog) late(from, now time.Time, bound time.Duration, hub int, spokes []region) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	lateAt := func(p *probe, region int) bool {
		t0, ok := p.seen[p.origin]
		if !ok {
			return false // its commit is not stamped yet: nothing known
		}
		if at, ok := p.seen[region]; ok {
			return at.Sub(t0) > bound
		}
		return now.Sub(t0) > bound
	}
	for _, p := range l.probes {
		if !p.ok || p.sent.Before(from) {
			continue
		}
		if len(spokes) == 1 {
			if lateAt(p, hub) {
				n++
			}
			continue
		}
		for _, s := range spokes {
			if s.id != p.origin && lateAt(p, s.id) {
				n++
			}
		}
	}
	return n
}
