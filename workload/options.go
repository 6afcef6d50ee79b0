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
	// MaxCandidates is the most candidates one transaction votes for.
	MaxCandidates int
	// MaxVotes is the most votes one candidate gets in one transaction.
	MaxVotes int
	// Interval is the pause after each transaction of one worker (0: none).
	Interval time.Duration
	// CandidateUpdateEvery: one transaction in this many (at random) also
	// updates a candidate (version + 1); 0 disables candidate updates.
	CandidateUpdateEvery int
	// ValidateEvery is the period of the validation loop.
	ValidateEvery time.Duration
}

// DefaultOptions returns the options a topology gets for the keys it leaves
// out: the original demo's worker (1–10 candidates, 1–10 votes each, a
// 100 ms pause), with a candidate update in one transaction of 100.
func DefaultOptions() Options {
	return Options{
		MaxCandidates:        10,
		MaxVotes:             10,
		Interval:             100 * time.Millisecond,
		CandidateUpdateEvery: 100,
		ValidateEvery:        time.Second,
	}
}

// Validate reports every option the workers cannot run with, each named by
// its topology key.
func (o Options) Validate() error {
	var errs []error
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
	return errors.Join(errs...)
}
