package workload

import (
	"errors"
	"fmt"
	"time"
)

// Options are the knobs of the ballot-casting workers. DefaultOptions is the
// one place their defaults are set: the topology loader starts from it and
// overrides the keys a file gives, and Run uses the options as they are.
type Options struct {
	// BallotsPerTxn, when positive, is the original's transaction shape:
	// exactly this many ballots per transaction, dealt round-robin over 1 to
	// min(BallotsPerTxn, MaxCandidates) distinct candidates picked at random.
	// 0 selects the older shape: 1 to MaxCandidates candidates with 1 to
	// MaxVotes ballots each.
	BallotsPerTxn int
	// MaxCandidates is the most candidates one transaction votes for (both
	// shapes).
	MaxCandidates int
	// MaxVotes is the most votes one candidate gets in one transaction; it
	// applies only when BallotsPerTxn is 0.
	MaxVotes int
	// Interval is the pause after each transaction of one worker (0: none).
	Interval time.Duration
	// CandidateUpdateEvery: one transaction in this many (at random) also
	// updates a candidate (version + 1); 0 disables candidate updates.
	CandidateUpdateEvery int
	// ValidateEvery is the period of the validation loop.
	ValidateEvery time.Duration
	// ReportEvery is the progress interval: every ReportEvery each working
	// region reports the ballots it inserted in that interval (the
	// original's reportAfter).
	ReportEvery time.Duration
	// FailFast ends the validation loop with an *InconsistentError at the
	// first violation it sees (the original's --errorIfInconsistent),
	// instead of logging it and going on.
	FailFast bool
}

// DefaultOptions returns the options a topology gets for the keys it leaves
// out: the original demo's worker (10 ballots per transaction over 1–10
// candidates, a 100 ms pause), with a candidate update in one transaction of
// 100.
func DefaultOptions() Options {
	return Options{
		BallotsPerTxn:        10,
		MaxCandidates:        10,
		MaxVotes:             10,
		Interval:             100 * time.Millisecond,
		CandidateUpdateEvery: 100,
		ValidateEvery:        15 * time.Second,
		ReportEvery:          5 * time.Second,
	}
}

// Validate reports every option the workers cannot run with, each named by
// its topology key.
func (o Options) Validate() error {
	var errs []error
	if o.BallotsPerTxn < 0 {
		errs = append(errs, fmt.Errorf("ballotsPerTxn = %d: must not be negative (0 selects the maxVotes shape)", o.BallotsPerTxn))
	}
	if o.MaxCandidates < 1 {
		errs = append(errs, fmt.Errorf("maxCandidates = %d: must be at least 1", o.MaxCandidates))
	}
	if o.MaxVotes < 1 {
		errs = append(errs, fmt.Errorf("maxVotes = %d: must be at least 1", o.MaxVotes))
	}
	if o.Interval < 0 {
		errs = append(errs, fmt.Errorf("interval = %s: must not be negative", o.Interval))
	}
	if o.CandidateUpdateEvery < 0 {
		errs = append(errs, fmt.Errorf("candidateUpdateEvery = %d: must not be negative (0 disables candidate updates)", o.CandidateUpdateEvery))
	}
	if o.ValidateEvery <= 0 {
		errs = append(errs, fmt.Errorf("validateEvery = %s: must be positive", o.ValidateEvery))
	}
	if o.ReportEvery <= 0 {
		errs = append(errs, fmt.Errorf("reportEvery = %s: must be positive", o.ReportEvery))
	}
	return errors.Join(errs...)
}

// MaxBallotsPer is the original's "theoretical max regional ballots per
// reporting interval": what `workers` workers of one region could insert in
// d if every transaction took no time (each casts at most the shape's
// ballots, then pauses Interval). ok is false when Interval is 0: there is
// no ceiling then.
func (o Options) MaxBallotsPer(workers int, d time.Duration) (n int64, ok bool) {
	if o.Interval <= 0 {
		return 0, false
	}
	perTxn := int64(o.BallotsPerTxn)
	if perTxn == 0 {
		perTxn = int64(o.MaxCandidates) * int64(o.MaxVotes)
	}
	return int64(workers) * perTxn * int64(d/o.Interval), true
}
