// Package workload casts ballots in a region the way the original VOTR demo
// does, and checks the region's invariant while it runs.
//
// A worker knows nothing about replication: it runs the plain SQL any client
// would (an UPDATE of totals, an INSERT of ballots, now and then an UPDATE of
// a candidate) and the schema's triggers stamp whence and src. Workers retry
// conflicts, ride out server restarts with capped exponential backoff, never
// commit half a transaction and count only what committed.
//
// The validation loop checks, in one snapshot, that every candidate's number
// of ballots equals its total, and logs every violation with both numbers.
package workload

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	// txnTimeout bounds one attempt, so a server that hangs (rather than
	// refusing connections) is noticed and treated as an outage.
	txnTimeout = 30 * time.Second
	// stopGrace is how long an in-flight transaction may still take to
	// commit after the workers were told to stop; after it, it is abandoned
	// (the server rolls it back).
	stopGrace = 5 * time.Second
	// backoffBase and backoffCap shape the wait between attempts while a
	// region is unreachable: base·2^attempt, capped, with jitter.
	backoffBase = 50 * time.Millisecond
	backoffCap  = 5 * time.Second
)

// moods are what a candidate update sets; any text would do.
var moods = []string{"hopeful", "confident", "anxious", "cheerful", "defiant", "weary", "serene",
	"jubilant", "stoic", "gloomy", "pensive", "determined", "smug", "wistful", "proud", "curious"}

// Option tunes Run beyond its Options.
type Option func(*options)

type options struct {
	rate float64 // transactions per second for the whole region; 0 = unlimited
	// budget, when set, bounds the ballots cast (see WithBudget).
	budget *Budget
}

// WithRateLimit caps the region's workers together at perSec transactions
// per second (0 or less: no cap). It comes on top of cfg.Interval: a worker
// waits for both. Tests and benchmarks use it to drive a region at a known,
// bounded rate that the sinks on a small machine can follow.
func WithRateLimit(perSec float64) Option {
	return func(o *options) { o.rate = perSec }
}

// WithBudget makes the workers take every transaction's ballots from b,
// which may be shared by the workers of several regions; a worker stops when
// b is spent, and the transaction that spends it is cut to what was left.
func WithBudget(b *Budget) Option {
	return func(o *options) { o.budget = b }
}

// Run starts `workers` ballot-casting workers on the region's database and
// blocks until ctx is done (it then returns nil once every in-flight
// transaction has committed or rolled back) or until an error that no retry
// can fix (returned, after stopping the other workers).
//
// cfg is used as given (start from DefaultOptions); Run refuses options that
// fail Options.Validate. The pool should have at least `workers` connections.
func Run(ctx context.Context, pool *pgxpool.Pool, region int, workers int, cfg Options, log *slog.Logger, stats *Stats, opts ...Option) error {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if stats == nil {
		stats = &Stats{}
	}
	if workers < 1 {
		return fmt.Errorf("region %d: workers = %d: need at least 1 worker", region, workers)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("region %d: %w", region, err)
	}
	log = log.With("region", region)
	if max := pool.Config().MaxConns; int(max) < workers {
		log.Warn("the pool has fewer connections than workers; workers will wait for each other", "pool_max_conns", max, "workers", workers)
	}
	h := &health{region: region, log: log, stats: stats}

	ids, err := loadCandidates(ctx, pool, h)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("region %d: %w", region, err)
	}
	if len(ids) == 0 {
		return fmt.Errorf("region %d: no candidates to vote for: seed the region (schema.Seed) before starting workers", region)
	}
	log.Info("casting ballots", "workers", workers, "candidates", len(ids),
		"ballots_per_txn", cfg.BallotsPerTxn, "max_candidates_per_txn", cfg.MaxCandidates, "max_votes", cfg.MaxVotes, "interval", cfg.Interval, "rate_limit", o.rate)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var lim *limiter
	if o.rate > 0 {
		lim = &limiter{every: time.Duration(float64(time.Second) / o.rate)}
	}
	var (
		wg       sync.WaitGroup
		firstErr error
		errOnce  sync.Once
	)
	for i := range workers {
		w := &worker{
			id: i, region: region, pool: pool, cfg: cfg, ids: ids, log: log.With("worker", i),
			stats: stats, health: h, limiter: lim, budget: o.budget,
			rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		}
		wg.Go(func() {
			if err := w.run(ctx); err != nil {
				errOnce.Do(func() { firstErr = err; cancel() })
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("region %d: %w", region, firstErr)
	}
	return nil
}

// loadCandidates reads the candidate ids, sorted (the order workers lock
// totals rows in), waiting out an unreachable region.
func loadCandidates(ctx context.Context, pool *pgxpool.Pool, h *health) ([]string, error) {
	for attempt := 0; ; attempt++ {
		rows, err := pool.Query(ctx, `SELECT candidate::text FROM public.candidates ORDER BY candidate`)
		var ids []string
		if err == nil {
			ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err == nil {
			h.ok()
			return ids, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if classify(err) == fatal {
			return nil, fmt.Errorf("read candidates: %w", err)
		}
		h.failed(err)
		if !sleep(ctx, backoff(attempt, rand.Float64())) {
			return nil, ctx.Err()
		}
	}
}

// vote is one candidate's share of a transaction.
type vote struct {
	candidate string
	n         int64
}

// plan is one transaction's content, fixed before the first attempt so that
// a retry casts exactly the same ballots.
type plan struct {
	votes []vote // sorted by candidate: every worker locks totals in one order
	// update, when not "", is the candidate whose row this transaction also
	// updates (mood, version + 1).
	update string
	mood   string
}

func (p plan) ballots() int64 {
	var n int64
	for _, v := range p.votes {
		n += v.n
	}
	return n
}

// cut reduces the plan to n ballots (1 <= n <= p.ballots()): it drops
// candidates from the end while whole ones must go, then trims the last one
// kept, so the candidate order (lock order) is kept.
func (p *plan) cut(n int64) {
	over := p.ballots() - n
	for len(p.votes) > 1 && over >= p.votes[len(p.votes)-1].n {
		over -= p.votes[len(p.votes)-1].n
		if p.votes[len(p.votes)-1].candidate == p.update {
			p.update = ""
		}
		p.votes = p.votes[:len(p.votes)-1]
	}
	p.votes[len(p.votes)-1].n -= over
}

type worker struct {
	id, region int
	pool       *pgxpool.Pool
	cfg        Options
	ids        []string
	log        *slog.Logger
	stats      *Stats
	health     *health
	limiter    *limiter
	budget     *Budget // nil: no limit
	rng        *rand.Rand
}

func (w *worker) run(ctx context.Context) error {
	// Stagger the workers' first transactions as the original does, so they
	// do not move in lockstep.
	if w.cfg.Interval > 0 && !sleep(ctx, time.Duration(w.rng.Int64N(int64(w.cfg.Interval)))) {
		return nil
	}
	for ctx.Err() == nil {
		if w.limiter != nil && !w.limiter.wait(ctx) {
			return nil
		}
		p := w.plan()
		if w.budget != nil {
			got := w.budget.take(p.ballots())
			if got == 0 {
				return nil // the budget is spent
			}
			p.cut(got)
		}
		committed, err := w.cast(ctx, p)
		if err != nil {
			return err
		}
		if !committed && w.budget != nil {
			w.budget.giveBack(p.ballots())
		}
		if w.cfg.Interval > 0 && !sleep(ctx, w.cfg.Interval) {
			return nil
		}
	}
	return nil
}

func (w *worker) plan() plan {
	most := min(w.cfg.MaxCandidates, len(w.ids))
	if b := w.cfg.BallotsPerTxn; b > 0 {
		most = min(most, b)
	}
	k := 1 + w.rng.IntN(most)
	// A partial Fisher–Yates over indexes picks k distinct candidates.
	idx := make([]int, len(w.ids))
	for i := range idx {
		idx[i] = i
	}
	p := plan{votes: make([]vote, k)}
	for i := range k {
		j := i + w.rng.IntN(len(idx)-i)
		idx[i], idx[j] = idx[j], idx[i]
		p.votes[i] = vote{candidate: w.ids[idx[i]], n: w.votes(i, k)}
	}
	// Totals are updated in ascending candidate order, so two transactions
	// lock the rows they share in the same order and cannot deadlock.
	slices.SortFunc(p.votes, func(a, b vote) int { return cmp.Compare(a.candidate, b.candidate) })
	if e := w.cfg.CandidateUpdateEvery; e > 0 && w.rng.IntN(e) == 0 {
		p.update = p.votes[w.rng.IntN(k)].candidate
		p.mood = moods[w.rng.IntN(len(moods))]
	}
	return p
}

// votes is the number of ballots the i-th of k picked candidates gets. In
// the original's shape ballot j goes to candidate j mod k, so the first
// BallotsPerTxn mod k candidates get one more than the others; otherwise it
// is 1 to MaxVotes at random.
func (w *worker) votes(i, k int) int64 {
	if b := w.cfg.BallotsPerTxn; b > 0 {
		n := b / k
		if i < b%k {
			n++
		}
		return int64(n)
	}
	return 1 + w.rng.Int64N(int64(w.cfg.MaxVotes))
}

// cast commits one planned transaction, retrying until it commits, ctx ends
// or a fatal error occurs. committed is false when the transaction surely
// did not commit. A nil result with ctx done means the transaction
// was abandoned (rolled back) or its outcome is unknown (counted in
// Stats.Unknown); it is never counted as committed unless it was.
func (w *worker) cast(ctx context.Context, p plan) (committed bool, err error) {
	outages := 0
	for {
		err = w.attempt(ctx, p)
		var amb *ambiguousCommit
		if errors.As(err, &amb) {
			switch w.resolve(ctx, amb) {
			case "committed":
				w.log.Info("connection lost before the outcome was known; the transaction did commit", "marker", amb.id)
				err = nil
			case "aborted":
				w.log.Info("connection lost before the outcome was known; the transaction did not commit and is retried", "marker", amb.id)
				err = amb.err
			default:
				w.stats.Unknown.Add(1)
				w.log.Warn("lost the connection before the transaction's outcome was known, and could not learn it before stopping",
					"marker", amb.id, "ballots", p.ballots(), "err", amb.err)
				return true, nil // maybe committed: its ballots stay spent
			}
		}
		if err == nil {
			w.health.ok()
			w.record(p)
			return true, nil
		}
		if ctx.Err() != nil {
			return false, nil // stopping: the attempt rolled back
		}
		switch classify(err) {
		case fatal:
			return false, err
		case conflict:
			w.stats.Retries.Add(1)
			w.log.Debug("transaction conflicted; retrying", "err", err)
			// A little jitter keeps two victims of one deadlock apart.
			if !sleep(ctx, time.Duration(w.rng.Int64N(int64(5*time.Millisecond)))) {
				return false, nil
			}
		case outage:
			w.stats.Retries.Add(1)
			w.health.failed(err)
			if !sleep(ctx, backoff(outages, w.rng.Float64())) {
				return false, nil
			}
			outages++
		}
	}
}

func (w *worker) record(p plan) {
	n := p.ballots()
	w.stats.Txns.Add(1)
	w.stats.Ballots.Add(n)
	w.stats.addCommitted(w.region, n)
	if p.update != "" {
		w.stats.CandidateUpdates.Add(1)
	}
}

// graceful derives the context of one transaction: it is not cancelled
// when ctx is, but stopGrace later, and never lives longer than txnTimeout.
func graceful(ctx context.Context) (context.Context, context.CancelFunc) {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), txnTimeout)
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(stopGrace, cancel) })
	return tctx, func() { stop(); cancel() }
}

// backoff is the wait before retry number attempt (from 0) during an
// outage: exponential, capped, with jitter in [50%, 100%] from j in [0,1).
func backoff(attempt int, j float64) time.Duration {
	d := backoffCap
	if attempt < 20 {
		d = min(backoffCap, backoffBase<<attempt)
	}
	return time.Duration(float64(d) * (0.5 + j/2))
}

// sleep waits d or until ctx is done; it reports whether it slept fully.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// health logs a region's outage once when it starts and once when it ends,
// however many workers run into it.
type health struct {
	region int
	log    *slog.Logger
	stats  *Stats
	down   atomic.Bool
	mu     sync.Mutex
	since  time.Time
}

func (h *health) failed(err error) {
	if h.down.Load() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down.Load() {
		return
	}
	h.since = time.Now()
	h.down.Store(true)
	h.stats.Outages.Add(1)
	h.log.Warn("region unreachable; workers keep retrying with backoff", "err", err)
}

func (h *health) ok() {
	if !h.down.Load() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.down.Load() {
		return
	}
	h.down.Store(false)
	h.log.Info("region reachable again; workers resumed", "outage", time.Since(h.since).Round(time.Millisecond))
}

// limiter spaces the transactions of all workers of a region evenly.
type limiter struct {
	every time.Duration
	mu    sync.Mutex
	next  time.Time
}

// wait blocks until the caller's slot; false if ctx ended first.
func (l *limiter) wait(ctx context.Context) bool {
	l.mu.Lock()
	now := time.Now()
	// Never bank more than one slot of idle time: after a pause (an outage)
	// the workers must not burst to catch up.
	if l.next.Before(now) {
		l.next = now
	}
	slot := l.next
	l.next = l.next.Add(l.every)
	l.mu.Unlock()
	return sleep(ctx, time.Until(slot))
}
