// Package plan holds votr's plans as data. A plan is built from a
// config.Topology and an observed State (what inspecting the live servers
// found, as plain values: no connection or server handle), and is then
// printed, encoded as JSON, diffed and tested without PostgreSQL. The runner
// fills the State and executes a plan's actions; nothing here touches a
// server.
package plan

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Op is what an action does to its resource.
type Op string

const (
	Create  Op = "create"  // "+": make a resource that is not there
	Change  Op = "change"  // "~": complete or start a resource that is there
	Destroy Op = "destroy" // "-": remove a resource
)

// Done is how a finished action of this kind is reported.
func (o Op) Done() string {
	switch o {
	case Create:
		return "created"
	case Change:
		return "changed"
	}
	return "destroyed"
}

// Symbol is how the op is printed: + ~ -.
func (o Op) Symbol() string {
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
	KindMember     = "member"     // a feed's row in its source's votr.slot_members
	// KindDrain (drain.go) is a former spoke's feed into the hub, caught up
	// before removal.
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
	// From: create the slot as a copy of this (shared) slot, at its
	// position; the feed stops reading the shared slot.
	From string `json:"from,omitempty"`
	// Target is the resource as a person reads it: "votr_1 on local:default".
	Target string `json:"target"`
	Detail string `json:"detail,omitempty"`
}

func (a Action) String() string {
	s := fmt.Sprintf("%s %s %s", a.Op.Symbol(), a.Kind, a.Target)
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
	// Workers says which regions run ballot workers when the topology runs.
	Workers string `json:"workers,omitempty"`
	// Foreign are databases of other deployments the plan works on: apply
	// and destroy refuse them unless told to take them over.
	Foreign []Foreign `json:"foreign,omitempty"`
	// Undrained are feeds into the hub of regions that left the topology
	// which the plan cannot drain before removing them (see drains):
	// apply refuses them unless told to give up what they did not bring.
	Undrained []Undrained `json:"undrained,omitempty"`
	// Observed is what the plan was computed from.
	Observed *State `json:"observed,omitempty"`
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
			fmt.Fprintf(tw, "  %s %s\t%s\t%s\n", a.Op.Symbol(), a.Kind, a.Target, a.Detail)
		}
		tw.Flush()
	}
	if len(p.Notes) > 0 {
		b.WriteString("\nNotes:\n")
		for _, n := range p.Notes {
			b.WriteString("  - " + n + "\n")
		}
	}
	if p.Workers != "" {
		b.WriteString("\nWorkers: " + p.Workers + "\n")
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

// On names a database, slot or origin on a server: "votr_1 on local:default".
func On(db, server string) string { return db + " on " + server }
