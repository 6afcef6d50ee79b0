package sink

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/script"
)

// Config describes one feed: source region → target region.
type Config struct {
	SourceID, TargetID int
	SourceDB, TargetDB string
	SourceDSN          string
	TargetDSN          string
	// Program is the merge script; nil means no merges (tables overwrite).
	Program *script.Program
	Options Options
	Logger  *slog.Logger
	// Registerer receives the feed's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Discard reads and decodes the stream but applies nothing and touches
	// no target (TargetDSN may be empty). It confirms what it read, so it
	// consumes the slot. It measures the decode ceiling of a feed.
	Discard bool
	// SynchronousCommit makes every target transaction wait for its WAL
	// flush (synchronous_commit = on). By default the sink commits
	// asynchronously, as native subscriptions do, and confirms source
	// positions only once the target's WAL is flushed past them.
	SynchronousCommit bool
	// StreamName is the application_name of the replication connection
	// (default "votr-sink"): the runner puts its deployment and process id
	// in it, so that a later process can tell a walsender left behind by a
	// killed one of its own deployment (see runner/busy.go).
	StreamName string

	// noEchoSkip (tests) applies echoes instead of skipping them by their
	// replication origin, so the merges alone must stop them.
	noEchoSkip bool
}

// Status is a snapshot of a feed.
type Status struct {
	Feed      string
	Connected bool
	// AppliedLSN is the commit position of the last source transaction
	// committed on the target (the checkpoint).
	AppliedLSN pglogrepl.LSN
	// ProcessedLSN is the source position up to which everything is
	// handled: applied, skipped as an echo, or not for this feed.
	ProcessedLSN pglogrepl.LSN
	// LastCommit is when the sink last committed on the target.
	LastCommit time.Time
	// Lag is from the source commit to the target commit of the last
	// applied transaction.
	Lag time.Duration
	// LagBytes is how far ProcessedLSN is behind the source's WAL end, as
	// last reported by the source.
	LagBytes                                     int64
	Txns, Rows, Conflicts, Dropped, DeadLettered int64
	// Skipped counts source transactions skipped as echoes of the reverse feed.
	Skipped int64
	// LockRetries counts groups rolled back and applied again because of
	// other writers' locks (deadlock, lock timeout, serialization failure).
	LockRetries int64
	// Rewrites counts compare-and-set writes that missed because another
	// writer changed or inserted the row after the sink read it; each was
	// read, merged and written again.
	Rewrites int64
	// TombstonesCollected counts tombstones this sink removed
	// (CollectTombstones); TombstoneRuns counts its collections.
	TombstonesCollected, TombstoneRuns int64
	RowsPerSec                         float64
	LastError                          string
}

// Sink applies one feed. Run it once; Status and WaitCaughtUp may be
// called from any goroutine.
type Sink struct {
	cfg  Config
	opts Options
	log  *slog.Logger
	feed string
	host *script.Host
	m    *metrics

	mu       sync.Mutex
	st       Status
	samples  []rateSample
	progress chan struct{} // closed and replaced when ProcessedLSN moves
	waiters  int

	// Used by Run's goroutine between sessions and by the applier during
	// one; never concurrently.
	groups atomic.Int64 // target transactions committed (for measurements)

	// guardedGroups > 0: inserts use ON CONFLICT DO NOTHING for that many
	// more groups, since a plain insert met an existing row.
	guardedGroups atomic.Int64

	originDenied bool // logged once that the target refuses origins

	queueStats queueStats // high-water marks of the sessions' queues

	// checkpoint is the feed's checkpoint as this session last read or
	// committed it: the next commit must find it there (checkpoint.go).
	checkpoint pglogrepl.LSN
	// copying: a backfill, whose commit creates the feed's checkpoint row.
	copying bool
	// resumed, when set, is told the checkpoint a session read and whether
	// the session held the feed's origin then (tests).
	resumed func(checkpoint pglogrepl.LSN, originHeld bool)
}

type rateSample struct {
	at   time.Time
	rows int64
}

// New checks cfg and prepares a sink; it connects to nothing.
func New(cfg Config) (*Sink, error) {
	feed := schema.FeedName(cfg.SourceID, cfg.TargetID)
	if cfg.SourceID == cfg.TargetID {
		return nil, fmt.Errorf("feed %s: source and target are the same region", feed)
	}
	if cfg.SourceDSN == "" {
		return nil, fmt.Errorf("feed %s: no source connection string", feed)
	}
	if cfg.TargetDSN == "" && !cfg.Discard {
		return nil, fmt.Errorf("feed %s: no target connection string", feed)
	}
	if cfg.SourceDB == "" || (cfg.TargetDB == "" && !cfg.Discard) {
		return nil, fmt.Errorf("feed %s: source and target database names are required", feed)
	}
	if !slotNameRE.MatchString(schema.Slot(cfg.SourceDB, cfg.TargetID)) {
		return nil, fmt.Errorf("feed %s: database name %q makes an invalid slot name; use lower-case letters, digits and _", feed, cfg.SourceDB)
	}
	o := cfg.Options
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("feed %s: %w", feed, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Sink{
		cfg: cfg, opts: o, feed: feed,
		log:      log.With("feed", feed),
		progress: make(chan struct{}),
	}
	s.st.Feed = feed
	if cfg.Program != nil && !cfg.Discard {
		h, err := script.NewHost(cfg.Program, o.MergeTimeout)
		if err != nil {
			return nil, fmt.Errorf("feed %s: %w", feed, err)
		}
		s.host = h
	}
	m, err := newMetrics(cfg.Registerer, feed)
	if err != nil {
		return nil, fmt.Errorf("feed %s: metrics: %w", feed, err)
	}
	s.m = m
	return s, nil
}

// Status returns a snapshot of the feed.
func (s *Sink) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	now := time.Now()
	if n := len(s.samples); n > 0 && now.Sub(s.samples[n-1].at) < 5*time.Second {
		first := s.samples[0]
		for _, x := range s.samples {
			if now.Sub(x.at) <= 5*time.Second {
				first = x
				break
			}
		}
		if dt := now.Sub(first.at).Seconds(); dt > 0.2 {
			st.RowsPerSec = float64(s.samples[n-1].rows-first.rows) / dt
		}
	}
	return st
}

// WaitCaughtUp waits until the feed has processed the source up to lsn.
func (s *Sink) WaitCaughtUp(ctx context.Context, lsn pglogrepl.LSN) error {
	s.mu.Lock()
	s.waiters++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.waiters--
		s.mu.Unlock()
	}()
	for {
		s.mu.Lock()
		done := s.st.ProcessedLSN >= lsn
		ch := s.progress
		s.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("feed %s: waiting to reach source position %s: %w", s.feed, lsn, ctx.Err())
		case <-ch:
		}
	}
}

func (s *Sink) setProcessed(lsn pglogrepl.LSN) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if lsn > s.st.ProcessedLSN {
		s.st.ProcessedLSN = lsn
		close(s.progress)
		s.progress = make(chan struct{})
	}
}

func (s *Sink) setConnected(c bool) {
	s.mu.Lock()
	s.st.Connected = c
	s.mu.Unlock()
	s.m.connected(c)
}

func (s *Sink) setError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.st.LastError = ""
	} else {
		s.st.LastError = err.Error()
	}
}
