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
	// shared: the feed reads the shared slot it should read, and is in
	// order without a slot of its own.
	shared bool
	// copyFrom: the feed reads the shared slot named, which it should no
	// longer read (sink.sharedHubSlot is off): its own slot is made as a
	// copy of it, from where it is, with nothing to copy to the target.
	copyFrom string
	// sharedSlot is the slot the feed should read with its source's other
	// feeds ("": its own).
	sharedSlot string
}

// planFeed decides what feed f needs; shared is the slot it should read
// with its source's other feeds ("": a slot of its own). A feed is in
// order when its checkpoint exists and its slot exists and streams: its own
// slot, or the shared slot its source records it as reading (it joins that
// only once its own slot has caught up with it, see sink.Fanout). The
// checkpoint is only ever written once the target holds everything the
// source committed before the slot's stream begins. A feed with its own
// slot reads that, whatever the mode: the shared slot may have passed it.
func planFeed(f config.Feed, obs *State, shared string) (feedPlan, error) {
	src, tgt := obs.Region(f.Source.ID), obs.Region(f.Target.ID)
	st := obs.Server(f.Source.ServerKey())
	if src == nil || tgt == nil || st == nil {
		return feedPlan{}, fmt.Errorf("internal: feed %s was not inspected", f)
	}
	fp := feedPlan{slotName: schema.Slot(f.Source.Database, f.Target.ID), sharedSlot: shared}
	sl, ok := st.Slots[fp.slotName]
	if ok && (sl.Plugin != "pgoutput" || sl.Database != f.Source.Database) {
		return feedPlan{}, fmt.Errorf("replication slot %s on %s exists but is not votr's (plugin %q, database %q); drop it with SELECT pg_drop_replication_slot('%s') or give region %d another database",
			fp.slotName, st.Key, sl.Plugin, sl.Database, fp.slotName, f.Source.ID)
	}
	fp.slotExists, fp.slotLost = ok, ok && sl.Lost
	fp.hasCheckpoint = tgt.Checkpoints[f.String()]
	member := src.SlotMembers[f.String()]
	lost := tgt.lostTables()
	switch {
	case fp.slotLost:
		fp.resync = "its slot was invalidated by PostgreSQL (it retained more WAL than max_slot_wal_keep_size allows)"
	case !ok && fp.hasCheckpoint && member != "":
		fp.resync = fp.readsShared(member, shared, st)
	case !ok && fp.hasCheckpoint:
		fp.resync = "its slot " + fp.slotName + " is gone (dropped outside votr?)"
	}
	switch {
	case fp.resync != "":
	case len(lost) > 0 && (ok || fp.hasCheckpoint):
		fp.resync = fmt.Sprintf("region %s lost %s (re-created empty)", f.Target.Label(), strings.Join(lost, ", "))
	case ok && !fp.hasCheckpoint && src.HasData:
		// An apply stopped between creating the slot and committing the
		// copy: the snapshot the slot exported is gone with it.
		fp.resync = "its slot has no checkpoint: an earlier apply stopped before the feed's copy was committed"
	}
	if fp.resync != "" {
		fp.shared, fp.copyFrom = false, ""
	}
	fp.copy = src.HasData && (fp.resync != "" || !fp.hasCheckpoint)
	return fp, nil
}

// readsShared judges a feed with a checkpoint and no slot of its own that
// its source records as reading the shared slot member: why it must be
// re-synced, or "" (then fp says how it goes on).
func (fp *feedPlan) readsShared(member, shared string, st *Server) string {
	sl, ok := st.Slots[member]
	switch {
	case !ok:
		return "the shared slot " + member + " it reads is gone (dropped outside votr?)"
	case sl.Lost:
		return "the shared slot " + member + " it reads was invalidated by PostgreSQL (it retained more WAL than max_slot_wal_keep_size allows)"
	case member == shared:
		fp.shared = true
	default:
		fp.copyFrom = member
	}
	return ""
}

// actions are the slot, backfill and checkpoint actions of the feed, in
// the order apply takes them. A re-synced feed's checkpoint is removed
// earlier (see Compute).
func (fp feedPlan) actions(f config.Feed, obs *State) []Action {
	var out []Action
	srcKey := f.Source.ServerKey()
	tgt := obs.Region(f.Target.ID)
	slot := Action{Kind: KindSlot, Feed: f.String(), Server: srcKey, Database: f.Source.Database, Name: fp.slotName, Target: On(fp.slotName, srcKey)}
	if fp.copyFrom != "" {
		a := slot
		a.Op, a.From = Create, fp.copyFrom
		a.Detail = fmt.Sprintf("feed %s reads a slot of its own again (sink.sharedHubSlot is off): a copy of the shared slot %s, from where it is", FeedLabel(f), fp.copyFrom)
		return []Action{a}
	}
	if fp.slotExists && fp.resync != "" {
		a := slot
		a.Op, a.Detail = Destroy, "re-sync of feed "+f.String()+": "+fp.resync+"; re-created below"
		out = append(out, a)
	}
	if (!fp.slotExists && !fp.shared) || fp.resync != "" {
		a := slot
		a.Op, a.Detail = Create, "feed "+FeedLabel(f)
		if fp.copy {
			a.Snapshot = true
			a.Detail += "; exports the snapshot the backfill below copies"
		}
		if fp.sharedSlot != "" {
			a.Detail += "; read until the feed has caught up with the shared slot " + fp.sharedSlot + ", then dropped"
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
