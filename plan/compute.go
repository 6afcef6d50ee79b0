package plan

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
)

// Compute compares the topology with what inspection found. It touches
// nothing; every difference becomes an action, in the order apply must take
// them: servers; the checkpoints of feeds to re-sync; databases, schema and
// seed in every region; then per feed its slot and its backfill or
// checkpoint; then the drains of former spokes' feeds into the hub; then
// removals.
func Compute(t *config.Topology, obs *State) (*Plan, error) {
	p := &Plan{Topology: t.Path, Observed: obs}
	add := func(a Action) { p.Actions = append(p.Actions, a) }

	hosting := map[string]bool{}
	for _, reg := range t.Regions() {
		hosting[reg.ServerKey()] = true
		if obs.Region(reg.ID) == nil {
			return nil, fmt.Errorf("internal: region %d was not inspected", reg.ID)
		}
	}
	if err := fewerCandidates(t, obs); err != nil {
		return nil, err
	}
	for _, s := range obs.Servers {
		if !s.Managed || !hosting[s.Key] {
			continue
		}
		switch {
		case !s.Exists:
			detail := "initdb and start a managed PostgreSQL server, data in " + s.Dir
			if s.DataLost {
				detail = "its data directory was deleted outside votr: the databases recorded there are lost; " + detail + " (new and empty)"
			}
			add(Action{Op: Create, Kind: KindServer, Server: s.Key, Target: s.Key, Detail: detail})
		case s.StartedToInspect || s.Stopped:
			detail := "start the stopped server"
			if s.PortTaken != 0 {
				detail = fmt.Sprintf("start the stopped server on a new free port (its port %d is now used by another program)", s.PortTaken)
			}
			add(Action{Op: Change, Kind: KindServer, Server: s.Key, Target: s.Key, Detail: detail})
		}
	}

	// A feed's checkpoint is its promise that the target holds everything
	// the source committed before the slot's stream begins. When that no
	// longer holds (the slot is gone or invalidated, the target lost a
	// table), the feed is re-synced, and its checkpoint goes first: an
	// apply stopped halfway then leaves a feed the next plan re-syncs too.
	// Feeds that copy come first: a feed whose slot is created after the
	// copy into its source never has to decode that copy (an echo its sink
	// would skip, but only after the walsender decoded and sent all of it).
	var copying, feedActions []Action
	feeds := map[string]bool{}
	for _, f := range t.Feeds() {
		feeds[f.String()] = true
		fp, err := planFeed(f, obs, SharedSlotOf(t, f))
		if err != nil {
			return nil, err
		}
		if fp.resync != "" && fp.hasCheckpoint {
			tgt := obs.Region(f.Target.ID)
			add(Action{Op: Destroy, Kind: KindCheckpoint, Region: intp(f.Target.ID), Feed: f.String(), Server: tgt.Server,
				Database: f.Target.Database, Target: fmt.Sprintf("%s in %s", f, On(f.Target.Database, tgt.Server)),
				Detail: "re-sync of feed " + f.String() + ": " + fp.resync})
		}
		if fp.slotLost {
			p.Notes = append(p.Notes, fmt.Sprintf("replication slot %s of feed %s on %s was invalidated by PostgreSQL: it retained more WAL than the server's max_slot_wal_keep_size allows while its sink was behind or stopped. The plan re-syncs region %s: it drops the slot, re-creates it and copies region %s's rows again through the merges.",
				fp.slotName, f, f.Source.ServerKey(), f.Target.Label(), f.Source.Label()))
		}
		if fp.copy {
			copying = append(copying, fp.actions(f, obs)...)
		} else {
			feedActions = append(feedActions, fp.actions(f, obs)...)
		}
	}
	feedActions = append(copying, feedActions...)
	shared, err := sharedSlotActions(t, obs)
	if err != nil {
		return nil, err
	}
	feedActions = append(feedActions, shared...)

	for _, reg := range t.Regions() {
		rs := obs.Region(reg.ID)
		base := Action{Region: intp(reg.ID), Server: rs.Server, Database: reg.Database, Target: On(reg.Database, rs.Server)}
		a := base
		if !rs.Exists {
			a.Op, a.Kind, a.Detail = Create, KindDatabase, "region "+reg.Label()
			add(a)
		}
		if len(rs.Missing)+len(rs.Outdated) > 0 {
			a = base
			a.Kind = KindSchema
			if slices.Contains(rs.Missing, "table votr.region") {
				a.Op, a.Detail = Create, "tables, clock triggers, publication "+schema.Publication
			} else {
				var parts []string
				if len(rs.Missing) > 0 {
					parts = append(parts, "add "+strings.Join(rs.Missing, ", "))
				}
				if len(rs.Outdated) > 0 {
					parts = append(parts, "replace "+strings.Join(rs.Outdated, ", ")+" (another votr's body)")
				}
				a.Op, a.Detail = Change, strings.Join(parts, "; ")
			}
			add(a)
		}
		if rs.Seeded < t.Candidates {
			a = base
			a.Kind = KindSeed
			if rs.Seeded == 0 {
				a.Op, a.Detail = Create, fmt.Sprintf("%d candidates with zero totals", t.Candidates)
			} else {
				a.Op, a.Detail = Change, fmt.Sprintf("%d of %d candidates present; add the rest", rs.Seeded, t.Candidates)
			}
			add(a)
		}
	}
	p.Actions = append(p.Actions, feedActions...)
	drain, undrained := drains(t, obs)
	p.Actions = append(p.Actions, drain...)
	p.Undrained = undrained
	p.Actions = append(p.Actions, removals(t, obs, feeds)...)

	for _, rs := range obs.Former {
		p.Notes = append(p.Notes, fmt.Sprintf("region %d is no longer in the topology: its database %s is kept, with its data, until `votr destroy`", rs.ID, On(rs.Database, rs.Server)))
	}
	for _, s := range obs.Servers {
		if s.StartedToInspect {
			p.Notes = append(p.Notes, fmt.Sprintf("server %s was stopped; it was started to inspect it (plan stops it again, apply keeps it running)", s.Key))
		}
		if s.Stopped {
			var ids []string
			for _, rs := range obs.Regions {
				if rs.Server == s.Key {
					ids = append(ids, strconv.Itoa(rs.ID))
				}
			}
			p.Notes = append(p.Notes, fmt.Sprintf("server %s is stopped and plan leaves it so: its regions (%s) are planned from the recorded state, not read (their databases, schema and slots may have changed since), so this plan may be incomplete; apply starts the server, inspects it and shows its own plan before changing anything", s.Key, strings.Join(ids, ", ")))
		}
		switch {
		case s.PortTaken != 0 && s.Stopped:
			p.Notes = append(p.Notes, fmt.Sprintf("server %s was recorded on port %d, which another program now listens on; plan does not move a server. To keep port %d, stop that program before apply; otherwise apply starts the server on a new free port and records it (a connect URL you copied from it must then be updated)", s.Key, s.PortTaken, s.PortTaken))
		case s.PortTaken != 0:
			p.Notes = append(p.Notes, fmt.Sprintf("server %s was recorded on port %d, which another program now listens on: it was started on a new free port, now recorded", s.Key, s.PortTaken))
		}
	}
	p.Notes = append(p.Notes, slotNotes(t, obs)...)
	p.Notes = append(p.Notes, crowdedServerNotes(t)...)
	p.Workers = workersText(t)
	return p, nil
}

// SharedSlotOf is the slot feed f reads with its source's other feeds
// ("": a slot of its own): the hub's outbound feeds share one with
// sink.sharedHubSlot. A feed with its own slot reads that until it is
// handed to the shared slot (sink.Fanout).
func SharedSlotOf(t *config.Topology, f config.Feed) string {
	if !t.Sink.SharedHubSlot || f.Source.ID != t.Hub.ID {
		return ""
	}
	return schema.SharedSlot(f.Source.Database)
}

// sharedSlotActions create the hub's shared slot (sink.sharedHubSlot), or
// replace one PostgreSQL invalidated (its members are re-synced from slots
// of their own). It comes after the feeds' slots and copies: a new feed
// reads its own slot first, and joins the shared one once it has caught up
// with it.
func sharedSlotActions(t *config.Topology, obs *State) ([]Action, error) {
	if !t.Sink.SharedHubSlot {
		return nil, nil
	}
	name, key := schema.SharedSlot(t.Hub.Database), t.Hub.ServerKey()
	st := obs.Server(key)
	if st == nil {
		return nil, fmt.Errorf("internal: server %s was not inspected", key)
	}
	sl, ok := st.Slots[name]
	if ok && (sl.Plugin != "pgoutput" || sl.Database != t.Hub.Database) {
		return nil, fmt.Errorf("replication slot %s on %s exists but is not votr's (plugin %q, database %q); drop it with SELECT pg_drop_replication_slot('%s'), or set sink.sharedHubSlot: false",
			name, key, sl.Plugin, sl.Database, name)
	}
	a := Action{Kind: KindSlot, Server: key, Database: t.Hub.Database, Name: name, Target: On(name, key)}
	var out []Action
	if ok && sl.Lost {
		d := a
		d.Op, d.Detail = Destroy, "the hub's shared slot was invalidated by PostgreSQL (it retained more WAL than max_slot_wal_keep_size allows); re-created below, and the feeds that read it are re-synced above"
		out = append(out, d)
	}
	if !ok || sl.Lost {
		a.Op = Create
		a.Detail = "read by the hub's outbound feeds together (sink.sharedHubSlot); a feed joins it once its own slot has caught up with it"
		out = append(out, a)
	}
	return out, nil
}

// fewerCandidates refuses a topology whose candidates key is below what
// its regions hold. votr never removes candidates: their ballots and totals
// would have to vanish from every region in one step, or the invariant and
// the "nothing lost" check would break, and workers vote for every
// candidate row they find, so ignoring the key would silently keep them.
func fewerCandidates(t *config.Topology, obs *State) error {
	var regions []string
	most := 0
	for _, reg := range t.Regions() {
		rs := obs.Region(reg.ID)
		if rs.Extra > 0 {
			regions = append(regions, fmt.Sprintf("region %s holds %d", reg.Label(), rs.Seeded+rs.Extra))
			most = max(most, rs.Seeded+rs.Extra)
		}
	}
	if len(regions) == 0 {
		return nil
	}
	return fmt.Errorf("%s: candidates: %d is fewer than the regions hold (%s); votr does not remove candidates, since their ballots and totals would have to go from every region at once: set candidates: %d (or more) again, or run `votr destroy` and apply again to start over with %d",
		t.Path, t.Candidates, strings.Join(regions, ", "), most, t.Candidates)
}

// removals are the feed resources of feeds no longer in the topology:
// their slots (which would otherwise hold WAL forever), origins and
// checkpoint rows. Only names votr makes, in databases of this topology or
// of regions the state records, are considered.
func removals(t *config.Topology, obs *State, feeds map[string]bool) []Action {
	var out []Action
	regionOf := func(server, db string) (int, bool) {
		for _, rs := range obs.Regions {
			if rs.Server == server && rs.Database == db {
				return rs.ID, true
			}
		}
		return 0, false
	}
	former := func(server, db string) bool {
		for _, rs := range obs.Former {
			if rs.Server == server && rs.Database == db {
				return true
			}
		}
		return false
	}
	// leftover names the feed of a slot or origin in database db on server
	// (other is the region id its name holds; dbIsSource: db is the feed's
	// source, as for a slot) and says whether it goes: its feed left the
	// topology, or db is a former region's (its feed is then "?:D" or "S:?").
	leftover := func(server, db string, other int, dbIsSource bool) (string, bool) {
		id, inTopo := regionOf(server, db)
		here := fmt.Sprint(id)
		if !inTopo {
			if !former(server, db) {
				return "", false
			}
			here = "?"
		}
		feed := here + ":" + fmt.Sprint(other)
		if !dbIsSource {
			feed = fmt.Sprint(other) + ":" + here
		}
		return feed, !inTopo || !feeds[feed]
	}
	for _, s := range obs.Servers {
		for _, name := range sortedKeys(s.Slots) {
			sl := s.Slots[name]
			db, dst, ok := schema.ParseSlot(name)
			if !ok || sl.Database != db || sl.Plugin != "pgoutput" {
				continue
			}
			if feed, goes := leftover(s.Key, db, dst, true); goes {
				out = append(out, Action{Op: Destroy, Kind: KindSlot, Feed: feed, Server: s.Key, Database: db, Name: name,
					Target: On(name, s.Key), Detail: "its feed is no longer in the topology"})
			}
		}
	}
	for _, s := range obs.Servers {
		for _, name := range sortedKeys(s.Slots) {
			sl := s.Slots[name]
			db, ok := schema.ParseSharedSlot(name)
			if !ok || sl.Database != db || sl.Plugin != "pgoutput" {
				continue
			}
			id, inTopo := regionOf(s.Key, db)
			switch {
			case inTopo && id == t.Hub.ID && t.Sink.SharedHubSlot:
				continue // kept, or replaced by sharedSlotActions
			case inTopo && id == t.Hub.ID:
				out = append(out, Action{Op: Destroy, Kind: KindSlot, Server: s.Key, Database: db, Name: name, Target: On(name, s.Key),
					Detail: "sink.sharedHubSlot is off: the hub's outbound feeds read slots of their own"})
			case inTopo || former(s.Key, db):
				out = append(out, Action{Op: Destroy, Kind: KindSlot, Server: s.Key, Database: db, Name: name, Target: On(name, s.Key),
					Detail: "its region no longer sends to several others"})
			}
		}
	}
	for _, rs := range append(append([]*Region{}, obs.Regions...), obs.Former...) {
		for _, feed := range sortedKeys(rs.SlotMembers) {
			if feeds[feed] && !former(rs.Server, rs.Database) {
				continue
			}
			out = append(out, Action{Op: Destroy, Kind: KindMember, Region: intp(rs.ID), Feed: feed, Server: rs.Server,
				Database: rs.Database, Name: rs.SlotMembers[feed], Target: fmt.Sprintf("%s in %s", feed, On(rs.Database, rs.Server)),
				Detail: "its feed is no longer in the topology"})
		}
	}
	for _, s := range obs.Servers {
		for _, name := range sortedKeys(s.Origins) {
			db, src, ok := schema.ParseOrigin(name)
			if !ok {
				continue
			}
			if feed, goes := leftover(s.Key, db, src, false); goes {
				out = append(out, Action{Op: Destroy, Kind: KindOrigin, Feed: feed, Server: s.Key, Name: name,
					Target: On(name, s.Key), Detail: "its feed is no longer in the topology"})
			}
		}
	}
	for _, rs := range append(append([]*Region{}, obs.Regions...), obs.Former...) {
		for _, feed := range sortedKeys(rs.Checkpoints) {
			if feeds[feed] && !former(rs.Server, rs.Database) {
				continue
			}
			out = append(out, Action{Op: Destroy, Kind: KindCheckpoint, Region: intp(rs.ID), Feed: feed, Server: rs.Server,
				Database: rs.Database, Target: fmt.Sprintf("%s in %s", feed, On(rs.Database, rs.Server)),
				Detail: "its feed is no longer in the topology"})
		}
	}
	// A former region's publication would let a slot made by hand stream
	// it; with it gone, the region is plain data.
	for _, rs := range obs.Former {
		if rs.HasPublication {
			out = append(out, Action{Op: Destroy, Kind: KindPublication, Region: intp(rs.ID), Server: rs.Server, Database: rs.Database,
				Name: schema.Publication, Target: schema.Publication + " in " + On(rs.Database, rs.Server),
				Detail: fmt.Sprintf("region %d left the topology; its database and data stay until `votr destroy`", rs.ID)})
		}
	}
	return out
}

// slotNotes warn about WAL the topology's slots hold back, and about
// servers that let a slot hold back WAL without a limit.
func slotNotes(t *config.Topology, obs *State) []string {
	var notes []string
	for _, f := range t.Feeds() {
		st := obs.Server(f.Source.ServerKey())
		sl, ok := st.Slots[schema.Slot(f.Source.Database, f.Target.ID)]
		if ok && !sl.Lost && t.Sink.SlotWarnBytes > 0 && sl.RetainedBytes > t.Sink.SlotWarnBytes {
			notes = append(notes, fmt.Sprintf("replication slot %s (feed %s) retains %s of WAL on %s, more than sink.slotWarnBytes (%s): its sink is behind or has not run; apply starts it and it catches up",
				sl.Name, f, BytesText(sl.RetainedBytes), st.Key, BytesText(t.Sink.SlotWarnBytes)))
		}
	}
	if t.Sink.SharedHubSlot {
		name := schema.SharedSlot(t.Hub.Database)
		st := obs.Server(t.Hub.ServerKey())
		sl, ok := st.Slots[name]
		if ok && !sl.Lost && t.Sink.SlotWarnBytes > 0 && sl.RetainedBytes > t.Sink.SlotWarnBytes {
			notes = append(notes, fmt.Sprintf("replication slot %s (the hub's outbound feeds) retains %s of WAL on %s, more than sink.slotWarnBytes (%s): its feeds are behind or have not run; apply starts them and they catch up",
				sl.Name, BytesText(sl.RetainedBytes), st.Key, BytesText(t.Sink.SlotWarnBytes)))
		}
	}
	for _, s := range obs.Servers {
		if s.Running && !s.Managed && s.MaxSlotWALKeep == "-1" {
			notes = append(notes, fmt.Sprintf("server %s has max_slot_wal_keep_size = -1: a feed whose sink stops lets its slot keep WAL until the disk is full; set a limit the disk can hold, e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '4GB'; SELECT pg_reload_conf(); (a slot past it is invalidated, and apply then re-syncs its feed)", s.Key))
		}
	}
	return notes
}

// crowdedServer is how many of a topology's regions on one server make
// plan say what that costs. A walsender (PostgreSQL 15) reads every WAL
// record of its server to find its own database's changes, so the feeds
// of R regions on one server read about R times the WAL they send: with a
// hub and 4 spokes on one server the walsenders already took a fifth of a
// 2-vCPU machine's CPU at its sustained pace, and with 8 spokes they read
// nine times as many records per transaction as with a server per region
// (BENCHMARKS.md, part 4 and 4b).
const crowdedServer = 5

// crowdedServerNotes tell where many regions share a server: every feed
// reading from it pays for all of their WAL.
func crowdedServerNotes(t *config.Topology) []string {
	regions := map[string][]string{}
	var keys []string
	for _, r := range t.Regions() {
		k := r.ServerKey()
		if regions[k] == nil {
			keys = append(keys, k)
		}
		regions[k] = append(regions[k], r.Label())
	}
	var notes []string
	for _, k := range keys {
		if len(regions[k]) < crowdedServer {
			continue
		}
		feeds := 0
		for _, f := range t.Feeds() {
			if f.Source.ServerKey() == k {
				feeds++
			}
		}
		hubFeeds := ""
		if k == t.Hub.ServerKey() && !t.Sink.SharedHubSlot && len(t.Spokes) > 1 {
			hubFeeds = fmt.Sprintf("; sink.sharedHubSlot: true makes the hub's %d outbound feeds read one slot, so its WAL is read once for them (docs/operating.md, \"One slot for the hub's outbound feeds\")", len(t.Spokes))
		}
		notes = append(notes, fmt.Sprintf("server %s holds %d regions (%s): each of the %d feeds reading from it has a walsender that reads the WAL of all %d regions to find its own region's changes, so replication's CPU on this server grows with the square of its regions; where that is too much, give busy regions servers of their own (connect: local:NAME, or a server each; docs/operating.md, \"Capacity\")%s",
			k, len(regions[k]), strings.Join(regions[k], ", "), feeds, len(regions[k]), hubFeeds))
	}
	return notes
}

// FeedLabel reads "1:0" as "spoke 1 → hub".
func FeedLabel(f config.Feed) string {
	name := func(r config.Region) string {
		if r.ID == 0 {
			return "hub"
		}
		return "spoke " + r.Label()
	}
	return fmt.Sprintf("%s, %s → %s", f, name(f.Source), name(f.Target))
}

// CanCreate checks that the plan's new databases can be created with the
// roles votr connects as, before anything is.
func CanCreate(p *Plan, obs *State) error {
	for _, a := range p.Actions {
		if a.Op != Create || a.Kind != KindDatabase {
			continue
		}
		if s := obs.Server(a.Server); s != nil && !s.Managed && !s.CreateDB {
			return fmt.Errorf("server %s: role %s may not create databases, and database %s of region %d does not exist yet: run ALTER ROLE %s CREATEDB; as a superuser, or connect as a role that may (see docs/operating.md, \"Least privilege\")",
				a.Server, s.Role, a.Database, *a.Region, pgx.Identifier{s.Role}.Sanitize())
		}
	}
	return nil
}

// BytesText prints a byte count as people read it: "1.5 MiB".
func BytesText(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// workersText says which regions run ballot workers.
func workersText(t *config.Topology) string {
	if t.HubWorkers && len(t.Spokes) == 1 {
		return fmt.Sprintf("2-DC: both regions, hub %s and spoke %s (%d workers each), so both feeds carry new ballots and resolve conflicts (hubWorkers: false keeps the hub receiving only)",
			t.Hub.Label(), t.Spokes[0].Label(), t.Workers)
	}
	var ids []string
	for _, s := range t.Spokes {
		ids = append(ids, s.Label())
	}
	which := "spoke "
	if len(ids) > 1 {
		which = "spokes "
	}
	return fmt.Sprintf("%s%s (%d workers each); the hub only receives", which, strings.Join(ids, ", "), t.Workers)
}
