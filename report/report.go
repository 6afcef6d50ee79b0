// Package report builds the convergence report of `votr check` and of the
// end of `votr apply`: per region, its ballots, totals, invariant and
// order-independent digests compared with the hub; per feed, how far it has
// applied and what it has parked. A report is OK only when the regions are
// identical and consistent and nothing is waiting in a dead-letter table.
package report

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/workload"
)

// connectTimeout bounds reaching one database, so one dead region does not
// hold up the report of the others.
const connectTimeout = 10 * time.Second

// RegionTarget is a region to read. DSN may hold a password; it is never
// shown.
type RegionTarget struct {
	ID    int
	Label string
	DSN   string
}

// FeedTarget is a feed to describe: its checkpoint and dead letters live in
// the target database, its slot on the source's server.
type FeedTarget struct {
	Name                 string // "S:D"
	SourceID, TargetID   int
	SourceDSN, TargetDSN string
	Slot                 string
	// SharedSlot is the slot the feed reads with its source's other feeds
	// when it has none of its own ("": it only ever reads Slot).
	SharedSlot string
}

// Report is the state of every region and feed at one moment (each region
// read in its own snapshot).
type Report struct {
	At      time.Time      `json:"at"`
	HubID   int            `json:"hub"`
	Regions []RegionReport `json:"regions"`
	Feeds   []FeedReport   `json:"feeds"`
	// Committed, when set (see Check), is per region the ballots its workers
	// committed: every region must hold exactly that many with that src.
	Committed map[int]int64 `json:"committed,omitempty"`
	// Warnings need attention without making the report fail: a slot that
	// retains more WAL than wanted, or one PostgreSQL is about to
	// invalidate (see WarnSlots).
	Warnings []string `json:"warnings,omitempty"`
}

// RegionReport is one region read in one REPEATABLE READ snapshot.
type RegionReport struct {
	ID    int    `json:"id"`
	Label string `json:"label"`
	// Err says why the region could not be read; the other fields are then
	// empty.
	Err string `json:"error,omitempty"`

	Ballots    int64                `json:"ballots"`
	TotalsSum  int64                `json:"totals_sum"`
	Candidates int64                `json:"candidates"`
	Violations []workload.Violation `json:"violations"`
	// Digests are order-independent: the same rows give the same digest
	// whatever order they were written or are stored in.
	BallotsDigest    string `json:"ballots_digest"`
	TotalsDigest     string `json:"totals_digest"`
	CandidatesDigest string `json:"candidates_digest"`
	// BySrc counts ballots per originating region (the src column).
	BySrc map[int]int64 `json:"ballots_by_src"`

	// Match compares this region with the hub (all false when either could
	// not be read).
	Match Match `json:"matches_hub"`
}

// Match says which parts of a region equal the hub's.
type Match struct {
	Ballots    bool `json:"ballots"`
	Totals     bool `json:"totals"`
	Candidates bool `json:"candidates"`
	BySrc      bool `json:"ballots_by_src"`
}

func (m Match) all() bool { return m.Ballots && m.Totals && m.Candidates && m.BySrc }

// FeedReport is one feed: from its target, the checkpoint the sink commits
// with every applied transaction and the dead letters not yet replayed;
// from its source, the slot.
type FeedReport struct {
	Name     string `json:"name"`
	SourceID int    `json:"source"`
	TargetID int    `json:"target"`
	Slot     string `json:"slot"`
	// TargetErr / SourceErr say why that side could not be read.
	TargetErr string `json:"target_error,omitempty"`
	SourceErr string `json:"source_error,omitempty"`

	// Checkpoint is nil when the feed has not applied anything yet.
	Checkpoint         *Checkpoint `json:"checkpoint"`
	PendingDeadLetters int64       `json:"pending_dead_letters"`

	SlotExists bool `json:"slot_exists"`
	// Shared: Slot is read by the source's other feeds too (sink.Fanout).
	Shared     bool   `json:"shared,omitempty"`
	SlotActive bool   `json:"slot_active"`
	WALStatus  string `json:"wal_status,omitempty"`
	// UnappliedTxns is the feed's lag: the source transactions its sink
	// would still apply (changes to the published tables, committed after
	// the target's checkpoint, echoes of the reverse feed left out). It is
	// 0 once the feed has caught up, whatever else the source's server
	// writes. -1 when unknown: the slot is in use (its sink runs; see the
	// live status) or could not be read. UnappliedCapped: there are at
	// least that many (the count stops at unappliedCap changes).
	UnappliedTxns   int64 `json:"unapplied_txns"`
	UnappliedCapped bool  `json:"unapplied_capped,omitempty"`
	// RetainedBytes is the WAL the slot keeps on the source's server;
	// LagBytes is the WAL the server wrote since the position the sink
	// confirmed, of every database on it (so not 0 after convergence on a
	// shared server). Both are -1 when unknown.
	RetainedBytes int64 `json:"retained_bytes"`
	LagBytes      int64 `json:"lag_bytes"`
}

// Checkpoint is a feed's row in the target's votr.checkpoints.
type Checkpoint struct {
	SourceLSN    string     `json:"source_lsn"`
	SourceCommit *time.Time `json:"source_commit"`
	AppliedAt    *time.Time `json:"applied_at"`
	Txns         int64      `json:"txns"`
	Rows         int64      `json:"rows"`
	Conflicts    int64      `json:"conflicts"`
	Dropped      int64      `json:"dropped"`
	DeadLettered int64      `json:"dead_lettered"`
}

// Gather reads every region and feed (concurrently) and compares the
// regions with the hub, region hubID. An unreachable region or feed side is
// recorded in its row, not returned: the report then is not OK but still
// shows the others. The error is only for bad arguments.
func Gather(ctx context.Context, regions []RegionTarget, feeds []FeedTarget, hubID int) (*Report, error) {
	if len(regions) == 0 {
		return nil, errors.New("report: no regions to read")
	}
	seen := map[int]bool{}
	for _, r := range regions {
		if seen[r.ID] {
			return nil, fmt.Errorf("report: region %d is listed twice", r.ID)
		}
		seen[r.ID] = true
	}
	if !seen[hubID] {
		return nil, fmt.Errorf("report: the hub (region %d) is not among the regions to read", hubID)
	}
	rep := &Report{
		At:      time.Now().UTC(),
		HubID:   hubID,
		Regions: make([]RegionReport, len(regions)),
		Feeds:   make([]FeedReport, len(feeds)),
	}
	var wg sync.WaitGroup
	for i, r := range regions {
		wg.Go(func() { rep.Regions[i] = readRegion(ctx, r) })
	}
	for i, f := range feeds {
		wg.Go(func() { rep.Feeds[i] = readFeed(ctx, f) })
	}
	wg.Wait()
	rep.compare()
	return rep, nil
}

// Region returns the region with the given id.
func (r *Report) Region(id int) (*RegionReport, bool) {
	for i := range r.Regions {
		if r.Regions[i].ID == id {
			return &r.Regions[i], true
		}
	}
	return nil, false
}

func (r *Report) compare() {
	hub, _ := r.Region(r.HubID)
	for i := range r.Regions {
		reg := &r.Regions[i]
		if reg.Err != "" || hub.Err != "" {
			reg.Match = Match{}
			continue
		}
		reg.Match = Match{
			Ballots:    reg.BallotsDigest == hub.BallotsDigest,
			Totals:     reg.TotalsDigest == hub.TotalsDigest,
			Candidates: reg.CandidatesDigest == hub.CandidatesDigest,
			BySrc:      maps.Equal(reg.BySrc, hub.BySrc),
		}
	}
}

// Check records what each region's workers committed, so that Problems also
// proves "nothing lost, nothing doubled": every region must hold exactly
// committed[R] ballots with src = R. Regions absent from committed are not
// checked this way.
func (r *Report) Check(committed map[int]int64) {
	r.Committed = maps.Clone(committed)
}

// OK reports whether every check holds: every region was read, no region
// violates the invariant, every region's ballots, totals and candidates
// equal the hub's (digests and ballots per src), no feed has dead-lettered
// changes waiting to be replayed (a parked change is data some region lacks)
// or a broken slot, and, after Check, every region holds exactly the
// ballots the workers committed.
func (r *Report) OK() bool { return len(r.Problems()) == 0 }

// Problems says, one sentence each, what keeps the report from being OK.
func (r *Report) Problems() []string {
	var ps []string
	hub, ok := r.Region(r.HubID)
	if !ok {
		return []string{fmt.Sprintf("the hub (region %d) is not in the report", r.HubID)}
	}
	for _, reg := range r.Regions {
		name := "region " + reg.Label
		if reg.Err != "" {
			ps = append(ps, fmt.Sprintf("%s could not be read: %s", name, reg.Err))
			continue
		}
		if n := len(reg.Violations); n > 0 {
			shown := make([]string, 0, 3)
			for _, v := range reg.Violations[:min(n, 3)] {
				shown = append(shown, v.String())
			}
			more := ""
			if n > 3 {
				more = fmt.Sprintf(" and %d more", n-3)
			}
			ps = append(ps, fmt.Sprintf("%s violates the invariant for %d candidate(s): %s%s",
				name, n, strings.Join(shown, "; "), more))
		}
		if reg.ID == hub.ID || hub.Err != "" {
			continue
		}
		if !reg.Match.Ballots || !reg.Match.BySrc {
			ps = append(ps, fmt.Sprintf("%s holds different ballots than the hub: %d ballots vs %d at the hub%s",
				name, reg.Ballots, hub.Ballots, srcDiff(reg.BySrc, hub.BySrc)))
		}
		if !reg.Match.Totals {
			ps = append(ps, fmt.Sprintf("%s has different totals than the hub: sum %d vs %d at the hub",
				name, reg.TotalsSum, hub.TotalsSum))
		}
		if !reg.Match.Candidates {
			ps = append(ps, fmt.Sprintf("%s has different candidate rows than the hub (%d vs %d candidates; names, moods or versions differ)",
				name, reg.Candidates, hub.Candidates))
		}
	}
	for _, src := range slices.Sorted(maps.Keys(r.Committed)) {
		want := r.Committed[src]
		for _, reg := range r.Regions {
			if reg.Err != "" {
				continue
			}
			got := reg.BySrc[src]
			switch {
			case got < want:
				ps = append(ps, fmt.Sprintf("region %s lost ballots: it holds %d ballots from region %d, whose workers committed %d",
					reg.Label, got, src, want))
			case got > want:
				ps = append(ps, fmt.Sprintf("region %s doubled ballots: it holds %d ballots from region %d, whose workers committed only %d",
					reg.Label, got, src, want))
			}
		}
	}
	for _, f := range r.Feeds {
		if f.TargetErr != "" {
			ps = append(ps, fmt.Sprintf("feed %s: its target (region %d) could not be read: %s", f.Name, f.TargetID, f.TargetErr))
		}
		if f.SourceErr != "" {
			ps = append(ps, fmt.Sprintf("feed %s: its source (region %d) could not be read: %s", f.Name, f.SourceID, f.SourceErr))
		} else if !f.SlotExists {
			ps = append(ps, fmt.Sprintf("feed %s: replication slot %s does not exist on the source (region %d): run apply to create it", f.Name, f.Slot, f.SourceID))
		} else if f.WALStatus == "lost" {
			ps = append(ps, fmt.Sprintf("feed %s: replication slot %s was invalidated by PostgreSQL (it retained more WAL than max_slot_wal_keep_size allows): run `votr apply` again; its plan re-syncs region %d (drops the slot, re-creates it and copies region %d's rows again)", f.Name, f.Slot, f.TargetID, f.SourceID))
		}
		if f.PendingDeadLetters > 0 {
			ps = append(ps, fmt.Sprintf("feed %s: %d change(s) parked in votr.dead_letters of region %d and not replayed: fix the merge script and replay them",
				f.Name, f.PendingDeadLetters, f.TargetID))
		}
	}
	return ps
}

// WarnSlots records a warning for each feed whose slot retains more than
// limit bytes of WAL (limit ≤ 0: no size warning), or that PostgreSQL is
// about to invalidate (wal_status unreserved).
func (r *Report) WarnSlots(limit int64) {
	for _, f := range r.Feeds {
		switch {
		case !f.SlotExists || f.WALStatus == "lost":
			// A problem already.
		case f.WALStatus == "unreserved":
			r.Warnings = append(r.Warnings, fmt.Sprintf("feed %s: replication slot %s retains %s, past max_slot_wal_keep_size: PostgreSQL invalidates it at its next checkpoint unless the feed's sink catches up first",
				f.Name, f.Slot, byteSize(f.RetainedBytes)))
		case limit > 0 && f.RetainedBytes > limit:
			run := f.Name
			if f.Shared {
				run = fmt.Sprintf("%d:*", f.SourceID)
			}
			r.Warnings = append(r.Warnings, fmt.Sprintf("feed %s: replication slot %s retains %s of WAL on region %d's server, more than sink.slotWarnBytes (%s): its sink is behind or not running; run apply (or `votr sink --feed %s`) so it catches up",
				f.Name, f.Slot, byteSize(f.RetainedBytes), f.SourceID, byteSize(limit), run))
		}
	}
}

// srcDiff names the originating regions whose ballot counts differ.
func srcDiff(got, hub map[int]int64) string {
	keys := slices.Sorted(maps.Keys(got))
	for k := range hub {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		if got[k] != hub[k] {
			parts = append(parts, fmt.Sprintf("from region %d: %d vs %d", k, got[k], hub[k]))
		}
	}
	if len(parts) == 0 {
		return " (same count per originating region, different ballots)"
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return nil, errors.New(redact(err.Error(), dsn))
	}
	return conn, nil
}

// redact removes the DSN's password from a message, in case a driver error
// quoted the connection string.
func redact(msg, dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
			msg = strings.ReplaceAll(msg, url.QueryEscape(pw), "xxxxx")
		}
	}
	for _, f := range strings.Fields(dsn) { // key=value form
		if v, ok := strings.CutPrefix(f, "password="); ok && v != "" {
			msg = strings.ReplaceAll(msg, strings.Trim(v, "'"), "xxxxx")
		}
	}
	return msg
}
