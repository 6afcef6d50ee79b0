package workload

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// Stats counts what workers did. Only committed transactions are counted.
// One Stats may be shared by the workers of several regions: the plain
// counters then add up all regions, and Committed keeps them apart.
type Stats struct {
	Txns             atomic.Int64 // committed transactions
	Ballots          atomic.Int64 // ballots in committed transactions
	CandidateUpdates atomic.Int64 // candidate rows updated by committed transactions
	Retries          atomic.Int64 // attempts run again (conflicts, outages, aborted commits)
	Outages          atomic.Int64 // times a region became unreachable
	// Unknown counts transactions whose COMMIT outcome could not be learned
	// before the workers stopped (connection lost during COMMIT, then the
	// context ended). They are not in Txns or Ballots; the region's own
	// database is the truth for them (ballots with src = region).
	Unknown atomic.Int64

	mu        sync.Mutex
	committed map[int]int64 // region → ballots committed there
}

func (s *Stats) addCommitted(region int, ballots int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.committed == nil {
		s.committed = make(map[int]int64)
	}
	s.committed[region] += ballots
}

// Committed returns, per region, the ballots its workers committed: what
// every region must hold with src = that region once the feeds have drained.
func (s *Stats) Committed() map[int]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.committed)
}

// Snapshot is the counters at one moment, for computing rates.
type Snapshot struct {
	At               time.Time
	Txns             int64
	Ballots          int64
	CandidateUpdates int64
	Retries          int64
}

// Snapshot reads the counters now.
func (s *Stats) Snapshot() Snapshot {
	return Snapshot{
		At:               time.Now(),
		Txns:             s.Txns.Load(),
		Ballots:          s.Ballots.Load(),
		CandidateUpdates: s.CandidateUpdates.Load(),
		Retries:          s.Retries.Load(),
	}
}

// Rates returns transactions and ballots per second between prev and s.
// A status line keeps the previous snapshot and calls this once per tick.
func (s Snapshot) Rates(prev Snapshot) (txnsPerSec, ballotsPerSec float64) {
	d := s.At.Sub(prev.At).Seconds()
	if d <= 0 {
		return 0, 0
	}
	return float64(s.Txns-prev.Txns) / d, float64(s.Ballots-prev.Ballots) / d
}

// ValidatorStats counts what a validation loop saw.
type ValidatorStats struct {
	Checks         atomic.Int64 // checks completed
	Violations     atomic.Int64 // violations found, summed over all checks
	LastViolations atomic.Int64 // violations found by the latest check
	Errors         atomic.Int64 // checks that could not run (region unreachable)
	lastCheck      atomic.Int64 // unix nanoseconds of the latest completed check
}

// LastCheck is when the latest check completed (zero before the first).
func (v *ValidatorStats) LastCheck() time.Time {
	n := v.lastCheck.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Every calls read once per period, the first time a period from now, until
// ctx ends or read returns false. It paces the readings taken of a running
// workload (progress per period, status lines, lag and wait samples), so
// that each of them is not its own ticker loop.
func Every(ctx context.Context, period time.Duration, read func() bool) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// Both may be ready at once, and select picks either.
		if ctx.Err() != nil || !read() {
			return
		}
	}
}
