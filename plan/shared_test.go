package plan

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
)

// sharedTopology is topology with sink.sharedHubSlot on.
func sharedTopology(t *testing.T, spokes ...int) *config.Topology {
	topo := topology(t, spokes...)
	topo.Sink.SharedHubSlot = true
	return topo
}

// sharedConverged is what inspection finds once every outbound feed of the
// hub reads its shared slot: no slot of their own, each recorded as a
// member in the hub's database.
func sharedConverged(topo *config.Topology) *State {
	st := converged(topo)
	srv, hub := st.Servers[0], st.Region(topo.Hub.ID)
	name := schema.SharedSlot(hub.Database)
	srv.Slots[name] = Slot{Name: name, Plugin: "pgoutput", Database: hub.Database, RetainedBytes: 100}
	hub.SlotMembers = map[string]string{}
	for _, f := range topo.Feeds() {
		if f.Source.ID == topo.Hub.ID {
			delete(srv.Slots, schema.Slot(f.Source.Database, f.Target.ID))
			hub.SlotMembers[f.String()] = name
		}
	}
	return st
}

// The hub's outbound feeds through one slot (sink.sharedHubSlot): a new
// feed gets a slot of its own (the Fanout hands it to the shared slot once
// caught up); a member needs no slot; a member whose record or shared slot
// is gone, or whose shared slot was invalidated, is re-synced; turning the
// key off gives members copies of the shared slot and then drops it; a
// member that leaves the topology loses its record.
func TestComputeSharedHubSlot(t *testing.T) {
	one, two := sharedTopology(t, 1), sharedTopology(t, 1, 2)
	off := topology(t, 1, 2)
	withData := func(st *State) *State { st.Region(0).HasData = true; return st }
	tests := []struct {
		name  string
		topo  *config.Topology
		state func() *State
		want  []string
		from  map[string]string // slot created → the slot it copies
		notes []string
	}{{
		name:  "nothing there: every feed gets its own slot, then the shared slot is created",
		topo:  one,
		state: func() *State { return nothing(one) },
		want:  append(slices.Clone(firstApplyOneSpoke), "+ slot votr_0_out on local:default"),
	}, {
		name:  "every outbound feed reads the shared slot: no changes",
		topo:  two,
		state: func() *State { return sharedConverged(two) },
	}, {
		name:  "turned on over slots of their own: only the shared slot is created, the feeds keep theirs until handed over",
		topo:  two,
		state: func() *State { return converged(two) },
		want:  []string{"+ slot votr_0_out on local:default"},
	}, {
		name: "a feed half handed over (its own slot and its record): in order, its own slot wins",
		topo: two,
		state: func() *State {
			st := sharedConverged(two)
			st.Servers[0].Slots["votr_0_to_2"] = Slot{Name: "votr_0_to_2", Plugin: "pgoutput", Database: "votr_0"}
			return st
		},
	}, {
		name: "a feed with neither its own slot nor its record is re-synced",
		topo: two,
		state: func() *State {
			st := withData(sharedConverged(two))
			delete(st.Region(0).SlotMembers, "0:2")
			return st
		},
		want: []string{
			"- checkpoint 0:2 in votr_2 on local:default",
			"+ slot votr_0_to_2 on local:default", "+ backfill votr_2 on local:default",
		},
	}, {
		name: "the shared slot is gone: every member is re-synced, and the slot created again",
		topo: two,
		state: func() *State {
			st := withData(sharedConverged(two))
			delete(st.Servers[0].Slots, "votr_0_out")
			return st
		},
		want: []string{
			"- checkpoint 0:1 in votr_1 on local:default", "- checkpoint 0:2 in votr_2 on local:default",
			"+ slot votr_0_to_1 on local:default", "+ backfill votr_1 on local:default",
			"+ slot votr_0_to_2 on local:default", "+ backfill votr_2 on local:default",
			"+ slot votr_0_out on local:default",
		},
	}, {
		name: "the shared slot was invalidated: every member is re-synced, and the slot replaced",
		topo: one,
		state: func() *State {
			st := withData(sharedConverged(one))
			sl := st.Servers[0].Slots["votr_0_out"]
			sl.Lost = true
			st.Servers[0].Slots["votr_0_out"] = sl
			return st
		},
		want: []string{
			"- checkpoint 0:1 in votr_1 on local:default",
			"+ slot votr_0_to_1 on local:default", "+ backfill votr_1 on local:default",
			"- slot votr_0_out on local:default", "+ slot votr_0_out on local:default",
		},
	}, {
		name:  "turned off: each member's own slot is a copy of the shared slot, which is then dropped",
		topo:  off,
		state: func() *State { return withData(sharedConverged(two)) },
		want: []string{
			"+ slot votr_0_to_1 on local:default", "+ slot votr_0_to_2 on local:default",
			"- slot votr_0_out on local:default",
		},
		from: map[string]string{"votr_0_to_1": "votr_0_out", "votr_0_to_2": "votr_0_out"},
	}, {
		name: "a member's spoke leaves: its record goes with its feeds, the shared slot stays",
		topo: one,
		state: func() *State {
			return spokeLeft(sharedConverged(two), 2)
		},
		want: []string{
			"~ drain feed 2:0 into votr_0 on local:default",
			"- slot votr_2_to_0 on local:default",
			"- member 0:2 in votr_0 on local:default",
			"- origin votr_0_from_2 on local:default", "- origin votr_2_from_0 on local:default",
			"- checkpoint 2:0 in votr_0 on local:default", "- checkpoint 0:2 in votr_2 on local:default",
			"- publication votr in votr_2 on local:default",
		},
		notes: []string{"region 2 is no longer in the topology"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := checkPlan(t, tt.topo, tt.state(), tt.want, tt.notes)
			from := map[string]string{}
			for _, a := range p.Actions {
				if a.From != "" {
					from[a.Name] = a.From
				}
			}
			if len(from) > 0 || len(tt.from) > 0 {
				if !reflect.DeepEqual(from, tt.from) {
					t.Errorf("slots copied: %v, want %v", from, tt.from)
				}
			}
		})
	}
}

// A slot named like votr's shared slot but made by someone else (another
// plugin) is refused with a way out, not taken over.
func TestComputeSharedSlotNotVotrs(t *testing.T) {
	topo := sharedTopology(t, 1)
	st := converged(topo)
	st.Servers[0].Slots["votr_0_out"] = Slot{Name: "votr_0_out", Plugin: "test_decoding", Database: "votr_0"}
	_, err := Compute(topo, st)
	if err == nil || !strings.Contains(err.Error(), "votr_0_out") || !strings.Contains(err.Error(), "pg_drop_replication_slot") {
		t.Fatalf("Compute = %v, want a refusal naming votr_0_out and how to drop it", err)
	}
}

// Destroy drops a shared slot with the feeds' own.
func TestTeardownSharedSlot(t *testing.T) {
	st := sharedConverged(topology(t, 1))
	actions, _ := Teardown(st.Servers[0], []string{"votr_0"})
	want := []string{"- slot votr_0_out on local:default", "- origin votr_0_from_1 on local:default", "- database votr_0 on local:default"}
	if got := lines(&Plan{Actions: actions}); !reflect.DeepEqual(got, want) {
		t.Errorf("teardown of votr_0: %q, want %q", got, want)
	}
}
