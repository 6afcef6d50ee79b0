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
	// BatchBytes bounds the same by bytes (values as the source sent them,
	// and what indexes them): a chunk of a large source transaction, a
	// group, and (twice it) the queue between the stream reader and the
	// applier. Rows of large (TOASTed) values make chunks and groups
	// smaller; a sink holds about four times this in row data at most.
	BatchBytes int64
	// MergeTimeout bounds one call into the script.
	MergeTimeout time.Duration
	// Retries is how often a change that fails (a merge that throws, or a
	// statement the target refuses, such as a constraint of its own) is
	// retried, inside the open target transaction, before OnScriptError
	// applies.
	Retries       int
	OnScriptError OnScriptError
	// SlotWarnBytes: warn when a slot retains more WAL than this.
	SlotWarnBytes int64
	// SharedHubSlot: the hub's outbound feeds read one replication slot
	// together (Fanout) instead of one each, so that one walsender reads
	// and decodes the hub's WAL for every spoke. They then run in one
	// process: votr apply's, or one `votr sink --feed 0:*`.
	SharedHubSlot bool
	// TombstoneEvery is how often (at most) a sink collects its region's
	// tombstones, between two groups (CollectTombstones); TombstoneMargin
	// is how far past a tombstone every feed into the region must have
	// applied first (room for clock skew between the servers).
	TombstoneEvery, TombstoneMargin time.Duration
}

// Bounds of Options.BatchBytes.
const (
	DefaultBatchBytes = 64 << 20
	MinBatchBytes     = 64 << 10
	// MaxBatchBytes keeps a chunk's value offsets within int32 with room
	// for one more row (a pgoutput message is less than 1 GiB).
	MaxBatchBytes = 1 << 30
)

// DefaultOptions returns the options a topology gets for the keys it leaves out.
func DefaultOptions() Options {
	return Options{
		// Catch-up measured on 2 cores: 1000 applies ~15% faster than 200
		// (fewer commits, more folding of hot rows).
		BatchTxns: 1000,
		BatchRows: 10000,
		// Far above a workload group (10000 ballots are ~2 MB), low enough
		// that a feed of large values stays within a few hundred MB.
		BatchBytes: DefaultBatchBytes,
		// Long enough that a starved machine does not fail a trivial merge,
		// short enough to stop a runaway one.
		MergeTimeout:  5 * time.Second,
		Retries:       3,
		OnScriptError: DeadLetter,
		SlotWarnBytes: 1 << 30,
		// Tombstones cost an index entry each: once a minute keeps the
		// table small without adding work to every group.
		TombstoneEvery:  time.Minute,
		TombstoneMargin: DefaultTombstoneMargin,
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
	if o.BatchBytes < MinBatchBytes || o.BatchBytes > MaxBatchBytes {
		errs = append(errs, fmt.Errorf("batchBytes is %d; it must be between %d (64 KiB) and %d (1 GiB)", o.BatchBytes, MinBatchBytes, MaxBatchBytes))
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
	if o.TombstoneEvery <= 0 {
		errs = append(errs, fmt.Errorf("tombstoneEvery is %s; it must be positive", o.TombstoneEvery))
	}
	if o.TombstoneMargin < 0 {
		errs = append(errs, fmt.Errorf("tombstoneMargin is %s; it must not be negative", o.TombstoneMargin))
	}
	return errors.Join(errs...)
}
