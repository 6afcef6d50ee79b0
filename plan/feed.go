package plan

import (
	"fmt"
	"strings"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
)

// feedPlan is what one feed of the topology needs, from what inspection
// found.
type feedPlan struct {
	slotName      string
	slotExists    bool
	slotLost      bool
	hasCheckpoint bool
	// resync says why the feed must start over from a new slot, with its
	// target given a fresh copy of the source ("" when it need not).
	resync string
	// copy: the target must be given the source's rows (a backfill), from
	// the snapshot the new slot exports.
	copy bool
}

// planFeed decides what feed f needs. A feed is in order when its slot
// exists and streams, and its checkpoint exists: the checkpoint is only ever
// written once the target holds everything the source committed before the
// slot's stream begins.
func planFeed(f config.Feed, obs *State) (feedPlan, error) {
	src, tgt := obs.Region(f.Source.ID), obs.Region(f.Target.ID)
	st := obs.Server(f.Source.ServerKey())
	if src == nil || tgt == nil || st == nil {
		return feedPlan{}, fmt.Errorf("internal: feed %s was not inspected", f)
	}
	fp := feedPlan{slotName: schema.Slot(f.Source.Database, f.Target.ID)}
	sl, ok := st.Slots[fp.slotName]
	if ok && (sl.Plugin != "pgoutput" || sl.Database != f.Source.Database) {
		return feedPlan{}, fmt.Errorf("replication slot %s on %s exists but is not votr's (plugin %q, database %q); drop it with SELECT pg_drop_replication_slot('%s') or give region %d another database",
			fp.slotName, st.Key, sl.Plugin, sl.Database, fp.slotName, f.Source.ID)
	}
	fp.slotExists, fp.slotLost = ok, ok && sl.Lost
	fp.hasCheckpoint = tgt.Checkpoints[f.String()]
	lost := tgt.lostTables()
	switch {
	case fp.slotLost:
		fp.resync = "its slot was invalidated by PostgreSQL (it retained more WAL than max_slot_wal_keep_size allows)"
	case !ok && fp.hasCheckpoint:
		fp.resync = "its slot " + fp.slotName + " is gone (dropped outside votr?)"
	case len(lost) > 0 && (ok || fp.hasCheckpoint):
		fp.resync = fmt.Sprintf("region %s lost %s (re-created empty)", f.Target.Label(), strings.Join(lost, ", "))
	case ok && !fp.hasCheckpoint && src.HasData:
		// An apply stopped between creating the slot and committing the
		// copy: the snapshot the slot exported is gone with it.
		fp.resync = "its slot has no checkpoint: an earlier apply stopped before the feed's copy was committed"
	}
	fp.copy = src.HasData && (fp.resync != "" || !fp.hasCheckpoint)
	return fp, nil
}

// actions are the slot, backfill and checkpoint actions of the feed, in
// the order apply takes them. A re-synced feed's checkpoint is removed
// earlier (see Compute).
func (fp feedPlan) actions(f config.Feed, obs *State) []Action {
	var out []Action
	srcKey := f.Source.ServerKey()
	tgt := obs.Region(f.Target.ID)
	slot := Action{Kind: KindSlot, Feed: f.String(), Server: srcKey, Database: f.Source.Database, Name: fp.slotName, Target: On(fp.slotName, srcKey)}
	if fp.slotExists && fp.resync != "" {
		a := slot
		a.Op, a.Detail = Destroy, "re-sync of feed "+f.String()+": "+fp.resync+"; re-created below"
		out = append(out, a)
	}
	if !fp.slotExists || fp.resync != "" {
		a := slot
		a.Op, a.Detail = Create, "feed "+FeedLabel(f)
		if fp.copy {
			a.Snapshot = true
			a.Detail += "; exports the snapshot the backfill below copies"
		}
		out = append(out, a)
	}
	cp := Action{Op: Create, Region: intp(f.Target.ID), Feed: f.String(), Server: tgt.Server, Database: f.Target.Database}
	switch {
	case fp.copy:
		a := cp
		a.Kind, a.Target = KindBackfill, On(f.Target.Database, tgt.Server)
		a.Detail = fmt.Sprintf("copy region %s's rows, as of the slot's snapshot, into region %s through the merges; records checkpoint %s at the slot's consistent point",
			f.Source.Label(), f.Target.Label(), f)
		if fp.resync != "" {
			a.Detail = "re-sync: " + a.Detail
		}
		out = append(out, a)
	case !fp.hasCheckpoint || fp.resync != "":
		a := cp
		a.Kind, a.Target = KindCheckpoint, fmt.Sprintf("%s in %s", f, On(f.Target.Database, tgt.Server))
		a.Detail = "resume point of feed " + FeedLabel(f)
		out = append(out, a)
	}
	return out
}
