package sink

import (
	"errors"
	"fmt"
	"time"
)

// OnScriptError says what a sink does with a change whose merge keeps failing.
type OnScriptError string

const (
	DeadLetter OnScriptError = "deadletter" // park it in votr.dead_letters (default)
	StopFeed   OnScriptError = "stop"       // stop the feed with an error
)

// Options tune every sink of a topology. DefaultOptions is the one place
// their defaults are set: the topology loader starts from it and overrides
// the keys a file gives, and New uses the options as they are.
type Options struct {
	// BatchTxns is the most source transactions grouped in one target
	// transaction. Groups only grow when transactions queue up, so latency
	// is unaffected.
	BatchTxns int
	// BatchRows is the most row changes held before they are written to the
	// target inside the open transaction; it bounds memory, and a source
	// transaction larger than this is handed over in chunks of it.
	BatchRows int
	// MergeTimeout bounds one call into the script.
	MergeTimeout time.Duration
	// Retries is how often a failing merge is retried before OnScriptError applies.
	Retries       int
	OnScriptError OnScriptError
	// SlotWarnBytes: warn when a slot retains more WAL than this.
	SlotWarnBytes int64
}

// DefaultOptions returns the options a topology gets for the keys it leaves out.
func DefaultOptions() Options {
	return Options{
		// Catch-up measured on 2 cores: 1000 applies ~15% faster than 200
		// (fewer commits, more folding of hot rows).
		BatchTxns: 1000,
		BatchRows: 10000,
		// Long enough that a starved machine does not fail a trivial merge,
		// short enough to stop a runaway one.
		MergeTimeout:  5 * time.Second,
		Retries:       3,
		OnScriptError: DeadLetter,
		SlotWarnBytes: 1 << 30,
	}
}

// Validate reports every option a sink cannot run with, each named by its
// topology key.
func (o Options) Validate() error {
	var errs []error
	if o.BatchTxns < 1 {
		errs = append(errs, fmt.Errorf("batchTxns is %d; it must be at least 1", o.BatchTxns))
	}
	if o.BatchRows < 1 {
		errs = append(errs, fmt.Errorf("batchRows is %d; it must be at least 1", o.BatchRows))
	}
	if o.MergeTimeout <= 0 {
		errs = append(errs, fmt.Errorf("mergeTimeout is %s; it must be positive", o.MergeTimeout))
	}
	if o.Retries < 0 {
		errs = append(errs, fmt.Errorf("retries is %d; it must not be negative", o.Retries))
	}
	switch o.OnScriptError {
	case DeadLetter, StopFeed:
	default:
		errs = append(errs, fmt.Errorf("onScriptError is %q; want %q or %q", o.OnScriptError, DeadLetter, StopFeed))
	}
	if o.SlotWarnBytes < 1 {
		errs = append(errs, fmt.Errorf("slotWarnBytes is %d; it must be more than 0 bytes", o.SlotWarnBytes))
	}
	return errors.Join(errs...)
}
