package runner

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
)

// Op is what an action does to its resource.
type Op string

const (
	Create  Op = "create"  // "+": make a resource that is not there
	Change  Op = "change"  // "~": complete or start a resource that is there
	Destroy Op = "destroy" // "-": remove a resource
)

// done is how a finished action of this kind is reported.
func (o Op) done() string {
	switch o {
	case Create:
		return "created"
	case Change:
		return "changed"
	}
	return "destroyed"
}

func (o Op) symbol() string {
	switch o {
	case Create:
		return "+"
	case Change:
		return "~"
	}
	return "-"
}

// Kinds of resources a plan acts on.
const (
	KindServer     = "server"     // a managed local PostgreSQL server
	KindDatabase   = "database"   // a region's database
	KindSchema     = "schema"     // tables, triggers, publication of a region
	KindSeed       = "seed"       // the candidates and their zero totals
	KindSlot       = "slot"       // a feed's replication slot on the source server
	KindBackfill   = "backfill"   // a joining spoke's copy of the hub's data
	KindCheckpoint = "checkpoint" // a feed's row in the target's votr.checkpoints
	KindOrigin     = "origin"     // a feed's replication origin on the target server
	// KindPublication is the publication of a region that left the
	// topology: without it, nothing of the region's feeds is left.
	KindPublication = "publication"
)

// Action is one step of a plan. It is plain data: printed, diffed, encoded
// as JSON, and executed by apply.
type Action struct {
	Op   Op     `json:"op"`
	Kind string `json:"kind"`
	// Region is the region the action is about (nil for servers and feeds).
	Region *int `json:"region,omitempty"`
	// Feed is "S:D" for slot, backfill, checkpoint and origin actions.
	Feed     string `json:"feed,omitempty"`
	Server   string `json:"server"`
	Database string `json:"database,omitempty"`
	// Name is the slot's or origin's name.
	Name string `json:"name,omitempty"`
	// Snapshot: create the slot with an exported snapshot, held open for
	// the backfill that follows it.
	Snapshot bool `json:"snapshot,omitempty"`
	// Target is the resource as a person reads it: "votr_1 on local:default".
	Target string `json:"target"`
	Detail string `json:"detail,omitempty"`
}

func (a Action) String() string {
	s := fmt.Sprintf("%s %s %s", a.Op.symbol(), a.Kind, a.Target)
	if a.Detail != "" {
		s += " (" + a.Detail + ")"
	}
	return s
}

// Plan is what apply would do, computed from the live servers.
type Plan struct {
	Topology string   `json:"topology,omitempty"`
	Actions  []Action `json:"actions"`
	Notes    []string `json:"notes,omitempty"`
	// Observed is what the plan was computed from.
	Observed *Observed `json:"observed,omitempty"`
}

// Counts returns how many actions add, change and destroy resources.
func (p *Plan) Counts() (add, change, destroy int) {
	for _, a := range p.Actions {
		switch a.Op {
		case Create:
			add++
		case Change:
			change++
		case Destroy:
			destroy++
		}
	}
	return
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool { return len(p.Actions) == 0 }

// Summary is the last line of a printed plan.
func (p *Plan) Summary() string {
	a, c, d := p.Counts()
	return fmt.Sprintf("Plan: %d to add, %d to change, %d to destroy.", a, c, d)
}

// WriteText prints the plan the way Terraform does: one line per action
// with + ~ -, notes, and the summary line.
func (p *Plan) WriteText(w io.Writer) error {
	var b strings.Builder
	if p.Empty() {
		b.WriteString("No changes: the live servers and databases match the topology.\n")
	} else {
		b.WriteString("votr will perform these actions:\n\n")
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		for _, a := range p.Actions {
			fmt.Fprintf(tw, "  %s %s\t%s\t%s\n", a.Op.symbol(), a.Kind, a.Target, a.Detail)
		}
		tw.Flush()
	}
	if len(p.Notes) > 0 {
		b.WriteString("\nNotes:\n")
		for _, n := range p.Notes {
			b.WriteString("  - " + n + "\n")
		}
	}
	b.WriteString("\n" + p.Summary() + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the plan as one JSON document.
func (p *Plan) WriteJSON(w io.Writer) error {
	add, change, destroy := p.Counts()
	doc := struct {
		*Plan
		Add     int `json:"add"`
		Change  int `json:"change"`
		Destroy int `json:"destroy"`
	}{p, add, change, destroy}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

func intp(i int) *int { return &i }

func on(db, server string) string { return db + " on " + server }

// computePlan compares the topology with what inspection found. It touches
// nothing; every difference becomes an action, in the order apply must take
// them: servers; the checkpoints of feeds to re-sync; databases, schema and
// seed in every region; then per feed its slot and its backfill or
// checkpoint; then removals.
func computePlan(t *config.Topology, obs *Observed) (*Plan, error) {
	p := &Plan{Topology: t.Path, Observed: obs}
	add := func(a Action) { p.Actions = append(p.Actions, a) }

	hosting := map[string]bool{}
	for _, reg := range t.Regions() {
		hosting[reg.ServerKey()] = true
		if obs.region(reg.ID) == nil {
			return nil, fmt.Errorf("internal: region %d was not inspected", reg.ID)
		}
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
		case s.StartedToInspect:
			add(Action{Op: Change, Kind: KindServer, Server: s.Key, Target: s.Key,
				Detail: "start the stopped server"})
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
		fp, err := planFeed(f, obs)
		if err != nil {
			return nil, err
		}
		if fp.resync != "" && fp.hasCheckpoint {
			tgt := obs.region(f.Target.ID)
			add(Action{Op: Destroy, Kind: KindCheckpoint, Region: intp(f.Target.ID), Feed: f.String(), Server: tgt.Server,
				Database: f.Target.Database, Target: fmt.Sprintf("%s in %s", f, on(f.Target.Database, tgt.Server)),
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

	for _, reg := range t.Regions() {
		rs := obs.region(reg.ID)
		base := Action{Region: intp(reg.ID), Server: rs.Server, Database: reg.Database, Target: on(reg.Database, rs.Server)}
		a := base
		if !rs.Exists {
			a.Op, a.Kind, a.Detail = Create, KindDatabase, "region "+reg.Label()
			add(a)
		}
		if len(rs.Missing) > 0 {
			a = base
			a.Kind = KindSchema
			if slices.Contains(rs.Missing, "table votr.region") {
				a.Op, a.Detail = Create, "tables, clock triggers, publication "+schema.Publication
			} else {
				a.Op, a.Detail = Change, "add "+strings.Join(rs.Missing, ", ")
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
	p.Actions = append(p.Actions, removals(t, obs, feeds)...)

	for _, rs := range obs.Former {
		p.Notes = append(p.Notes, fmt.Sprintf("region %d is no longer in the topology: its database %s is kept, with its data, until `votr destroy`", rs.ID, on(rs.Database, rs.Server)))
	}
	for _, s := range obs.Servers {
		if s.StartedToInspect {
			p.Notes = append(p.Notes, fmt.Sprintf("server %s was stopped; it was started to inspect it (plan stops it again, apply keeps it running)", s.Key))
		}
	}
	p.Notes = append(p.Notes, slotNotes(t, obs)...)
	return p, nil
}

// removals are the feed resources of feeds no longer in the topology:
// their slots (which would otherwise hold WAL forever), origins and
// checkpoint rows. Only names votr makes, in databases of this topology or
// of regions the state records, are considered.
func removals(t *config.Topology, obs *Observed, feeds map[string]bool) []Action {
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
	for _, s := range obs.Servers {
		for _, name := range sortedKeys(s.Slots) {
			sl := s.Slots[name]
			db, dst, ok := parseName(slotName, name)
			if !ok || sl.Database != db || sl.Plugin != "pgoutput" {
				continue
			}
			src, inTopo := regionOf(s.Key, db)
			feed := fmt.Sprintf("%d:%d", src, dst)
			if inTopo && feeds[feed] {
				continue
			}
			if !inTopo {
				if !former(s.Key, db) {
					continue
				}
				feed = fmt.Sprintf("?:%d", dst)
			}
			out = append(out, Action{Op: Destroy, Kind: KindSlot, Feed: feed, Server: s.Key, Database: db, Name: name,
				Target: on(name, s.Key), Detail: "its feed is no longer in the topology"})
		}
	}
	for _, s := range obs.Servers {
		for _, name := range sortedKeys(s.Origins) {
			db, src, ok := parseName(originName, name)
			if !ok {
				continue
			}
			dst, inTopo := regionOf(s.Key, db)
			feed := fmt.Sprintf("%d:%d", src, dst)
			if inTopo && feeds[feed] {
				continue
			}
			if !inTopo {
				if !former(s.Key, db) {
					continue
				}
				feed = fmt.Sprintf("%d:?", src)
			}
			out = append(out, Action{Op: Destroy, Kind: KindOrigin, Feed: feed, Server: s.Key, Name: name,
				Target: on(name, s.Key), Detail: "its feed is no longer in the topology"})
		}
	}
	for _, rs := range append(append([]*RegionState{}, obs.Regions...), obs.Former...) {
		for _, feed := range sortedKeys(rs.Checkpoints) {
			if feeds[feed] && !former(rs.Server, rs.Database) {
				continue
			}
			out = append(out, Action{Op: Destroy, Kind: KindCheckpoint, Region: intp(rs.ID), Feed: feed, Server: rs.Server,
				Database: rs.Database, Target: fmt.Sprintf("%s in %s", feed, on(rs.Database, rs.Server)),
				Detail: "its feed is no longer in the topology"})
		}
	}
	// A former region's publication would let a slot made by hand stream
	// it; with it gone, the region is plain data.
	for _, rs := range obs.Former {
		if rs.HasPublication {
			out = append(out, Action{Op: Destroy, Kind: KindPublication, Region: intp(rs.ID), Server: rs.Server, Database: rs.Database,
				Name: schema.Publication, Target: schema.Publication + " in " + on(rs.Database, rs.Server),
				Detail: fmt.Sprintf("region %d left the topology; its database and data stay until `votr destroy`", rs.ID)})
		}
	}
	return out
}

// slotNotes warn about WAL the topology's slots hold back, and about
// servers that let a slot hold back WAL without a limit.
func slotNotes(t *config.Topology, obs *Observed) []string {
	var notes []string
	for _, f := range t.Feeds() {
		st := obs.server(f.Source.ServerKey())
		sl, ok := st.Slots[schema.Slot(f.Source.Database, f.Target.ID)]
		if ok && !sl.Lost && t.Sink.SlotWarnBytes > 0 && sl.RetainedBytes > t.Sink.SlotWarnBytes {
			notes = append(notes, fmt.Sprintf("replication slot %s (feed %s) retains %s of WAL on %s, more than sink.slotWarnBytes (%s): its sink is behind or has not run; apply starts it and it catches up",
				sl.Name, f, bytesText(sl.RetainedBytes), st.Key, bytesText(t.Sink.SlotWarnBytes)))
		}
	}
	for _, s := range obs.Servers {
		if s.Running && !s.Managed && s.MaxSlotWALKeep == "-1" {
			notes = append(notes, fmt.Sprintf("server %s has max_slot_wal_keep_size = -1: a feed whose sink stops lets its slot keep WAL until the disk is full; set a limit the disk can hold, e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '4GB'; SELECT pg_reload_conf(); (a slot past it is invalidated, and apply then re-syncs its feed)", s.Key))
		}
	}
	return notes
}

// feedLabel reads "1:0" as "spoke 1 → hub".
func feedLabel(f config.Feed) string {
	name := func(r config.Region) string {
		if r.ID == 0 {
			return "hub"
		}
		return "spoke " + r.Label()
	}
	return fmt.Sprintf("%s, %s → %s", f, name(f.Source), name(f.Target))
}
