package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
)

// topology parses a topology with a hub and the given spokes, all on the
// managed local server. No PostgreSQL is involved: parsing only compiles
// the merge script.
func topology(t *testing.T, spokes ...int) *config.Topology {
	t.Helper()
	var b strings.Builder
	b.WriteString("hub:\n  connect: local\nspokes:\n")
	for _, id := range spokes {
		fmt.Fprintf(&b, "  - id: %d\n    connect: local\n", id)
	}
	b.WriteString("candidates: 4\nscript: ../scripts/votr.ts\n")
	topo, err := config.Parse("../examples/plan-test.yaml", []byte(b.String()), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

const server = "local:default"

// nothing is what inspection finds before the first apply: the managed
// server was never initialised, no database exists.
func nothing(topo *config.Topology) *State {
	st := &State{Servers: []*Server{{Key: server, Managed: true, Dir: "/state/servers/default",
		Databases: map[string]bool{}, Slots: map[string]Slot{}, Origins: map[string]bool{}}}}
	for _, reg := range topo.Regions() {
		st.Regions = append(st.Regions, &Region{ID: reg.ID, Database: reg.Database, Server: server,
			Missing: append([]string{}, schema.Objects...), Checkpoints: map[string]bool{}})
	}
	return st
}

// converged is what inspection finds after a complete apply of topo.
func converged(topo *config.Topology) *State {
	srv := &Server{Key: server, Managed: true, Dir: "/state/servers/default", Exists: true, Running: true,
		Databases: map[string]bool{}, Slots: map[string]Slot{}, Origins: map[string]bool{}}
	st := &State{Servers: []*Server{srv}}
	for _, reg := range topo.Regions() {
		srv.Databases[reg.Database] = true
		st.Regions = append(st.Regions, &Region{ID: reg.ID, Database: reg.Database, Server: server, Exists: true,
			Seeded: topo.Candidates, HasPublication: true, Checkpoints: map[string]bool{}})
	}
	for _, f := range topo.Feeds() {
		name := schema.Slot(f.Source.Database, f.Target.ID)
		srv.Slots[name] = Slot{Name: name, Plugin: "pgoutput", Database: f.Source.Database, RetainedBytes: 100}
		srv.Origins[schema.Origin(f.Target.Database, f.Source.ID)] = true
		st.Region(f.Target.ID).Checkpoints[f.String()] = true
	}
	return st
}

// spokeLeft is st once spoke id has left the topology: its region is a
// former one.
func spokeLeft(st *State, id int) *State {
	st.Former = append(st.Former, st.Region(id))
	st.Regions = slices.DeleteFunc(st.Regions, func(r *Region) bool { return r.ID == id })
	return st
}

// firstApplyOneSpoke is the plan of a hub and spoke 1 on the managed
// server before anything exists.
var firstApplyOneSpoke = []string{
	"+ server local:default",
	"+ database votr_0 on local:default", "+ schema votr_0 on local:default", "+ seed votr_0 on local:default",
	"+ database votr_1 on local:default", "+ schema votr_1 on local:default", "+ seed votr_1 on local:default",
	"+ slot votr_1_to_0 on local:default", "+ checkpoint 1:0 in votr_0 on local:default",
	"+ slot votr_0_to_1 on local:default", "+ checkpoint 0:1 in votr_1 on local:default",
}

// lines are a plan's actions as "op kind target".
func lines(p *Plan) []string {
	var out []string
	for _, a := range p.Actions {
		out = append(out, fmt.Sprintf("%s %s %s", a.Op.Symbol(), a.Kind, a.Target))
	}
	return out
}

func TestCompute(t *testing.T) {
	two := topology(t, 1, 2)
	one := topology(t, 1)
	five := topology(t, 1, 2, 3, 4)
	tests := []struct {
		name  string
		topo  *config.Topology
		state func() *State
		want  []string
		notes []string // substrings, one per note expected
	}{{
		name:  "nothing there: everything is created",
		topo:  one,
		state: func() *State { return nothing(one) },
		want:  firstApplyOneSpoke,
	}, {
		name:  "converged: no changes",
		topo:  two,
		state: func() *State { return converged(two) },
	}, {
		name: "a stopped server is started, a missing trigger added, a seed completed",
		topo: one,
		state: func() *State {
			st := converged(one)
			st.Servers[0].StartedToInspect = true
			st.Region(1).Missing = []string{"trigger votr_stamp on public.ballots"}
			st.Region(1).Seeded = 3
			return st
		},
		want: []string{
			"~ server local:default",
			"~ schema votr_1 on local:default",
			"~ seed votr_1 on local:default",
		},
		notes: []string{"server local:default was stopped"},
	}, {
		name: "a removed spoke: its slots, origins, checkpoints and publication are destroyed",
		topo: one,
		state: func() *State {
			return spokeLeft(converged(two), 2)
		},
		want: []string{
			"~ drain feed 2:0 into votr_0 on local:default",
			"- slot votr_0_to_2 on local:default", "- slot votr_2_to_0 on local:default",
			"- origin votr_0_from_2 on local:default", "- origin votr_2_from_0 on local:default",
			"- checkpoint 2:0 in votr_0 on local:default", "- checkpoint 0:2 in votr_2 on local:default",
			"- publication votr in votr_2 on local:default",
		},
		notes: []string{"region 2 is no longer in the topology: its database votr_2 on local:default is kept"},
	}, {
		name: "a removed spoke whose slot into the hub is gone (dropped after its drain): nothing to drain",
		topo: one,
		state: func() *State {
			st := spokeLeft(converged(two), 2)
			delete(st.Servers[0].Slots, "votr_2_to_0")
			return st
		},
		want: []string{
			"- slot votr_0_to_2 on local:default",
			"- origin votr_0_from_2 on local:default", "- origin votr_2_from_0 on local:default",
			"- checkpoint 2:0 in votr_0 on local:default", "- checkpoint 0:2 in votr_2 on local:default",
			"- publication votr in votr_2 on local:default",
		},
		notes: []string{"region 2 is no longer in the topology: its database votr_2 on local:default is kept"},
	}, {
		name: "an invalidated slot: its feed is re-synced with a backfill",
		topo: one,
		state: func() *State {
			st := converged(one)
			sl := st.Servers[0].Slots["votr_0_to_1"]
			sl.Lost = true
			st.Servers[0].Slots["votr_0_to_1"] = sl
			st.Region(0).HasData = true
			return st
		},
		want: []string{
			"- checkpoint 0:1 in votr_1 on local:default",
			"- slot votr_0_to_1 on local:default", "+ slot votr_0_to_1 on local:default",
			"+ backfill votr_1 on local:default",
		},
		notes: []string{"replication slot votr_0_to_1 of feed 0:1 on local:default was invalidated"},
	}, {
		name:  "five regions on one server: converged, with a note on what their walsenders read",
		topo:  five,
		state: func() *State { return converged(five) },
		notes: []string{"server local:default holds 5 regions (0 (hub), 1, 2, 3, 4): each of the 8 feeds reading from it"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := checkPlan(t, tt.topo, tt.state(), tt.want, tt.notes)
			if p.Empty() != (len(tt.want) == 0) {
				t.Errorf("Empty() = %v with %d actions", p.Empty(), len(p.Actions))
			}
		})
	}
}

// checkPlan computes the plan of topo from st and checks its actions
// ("op kind target") and notes (a substring each, in order).
func checkPlan(t *testing.T, topo *config.Topology, st *State, want, notes []string) *Plan {
	t.Helper()
	p, err := Compute(topo, st)
	if err != nil {
		t.Fatal(err)
	}
	if got := lines(p); !reflect.DeepEqual(got, want) {
		t.Errorf("actions:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	if len(p.Notes) != len(notes) {
		t.Fatalf("notes %q, want %d", p.Notes, len(notes))
	}
	for i, n := range notes {
		if !strings.Contains(p.Notes[i], n) {
			t.Errorf("note %d is %q, want it to contain %q", i, p.Notes[i], n)
		}
	}
	return p
}

// A former spoke that cannot be drained (not inspected: its server left the
// topology; or its slot was invalidated) is listed as undrained, not
// silently removed; one that can is drained first.
func TestComputeUndrained(t *testing.T) {
	one, two := topology(t, 1), topology(t, 1, 2)
	tests := []struct {
		name  string
		state func() *State
		want  []string // undrained feeds
		drain bool
	}{{
		name: "inspected, slot there: drained", drain: true,
		state: func() *State {
			return spokeLeft(converged(two), 2)
		},
	}, {
		name: "not inspected (its server left the topology)", want: []string{"2:0"},
		state: func() *State {
			st := converged(two)
			st.Regions = st.Regions[:2]
			return st
		},
	}, {
		name: "slot invalidated", want: []string{"2:0"},
		state: func() *State {
			st := converged(two)
			st.Former = []*Region{st.Region(2)}
			st.Regions = st.Regions[:2]
			sl := st.Servers[0].Slots["votr_2_to_0"]
			sl.Lost = true
			st.Servers[0].Slots["votr_2_to_0"] = sl
			return st
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compute(one, tt.state())
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, u := range p.Undrained {
				got = append(got, u.Feed)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("undrained %q, want %q", got, tt.want)
			}
			drains := slices.ContainsFunc(p.Actions, func(a Action) bool { return a.Kind == KindDrain && a.Feed == "2:0" })
			if drains != tt.drain {
				t.Errorf("drain of 2:0 planned: %v, want %v", drains, tt.drain)
			}
		})
	}
}

func TestComputeNeedsEveryRegionInspected(t *testing.T) {
	topo := topology(t, 1)
	st := nothing(topo)
	st.Regions = st.Regions[:1]
	if _, err := Compute(topo, st); err == nil || !strings.Contains(err.Error(), "region 1 was not inspected") {
		t.Fatalf("err = %v, want region 1 not inspected", err)
	}
}

func TestCanCreate(t *testing.T) {
	topo := topology(t, 1)
	st := nothing(topo)
	p, err := Compute(topo, st)
	if err != nil {
		t.Fatal(err)
	}
	if err := CanCreate(p, st); err != nil {
		t.Errorf("managed server: %v", err)
	}
	st.Servers[0].Managed, st.Servers[0].Role = false, "app user"
	if err := CanCreate(p, st); err == nil || !strings.Contains(err.Error(), `ALTER ROLE "app user" CREATEDB`) {
		t.Errorf("role without CREATEDB: err = %v", err)
	}
	st.Servers[0].CreateDB = true
	if err := CanCreate(p, st); err != nil {
		t.Errorf("role with CREATEDB: %v", err)
	}
}

func TestTeardown(t *testing.T) {
	st := converged(topology(t, 1))
	srv := st.Servers[0]
	sl := srv.Slots["votr_1_to_0"]
	sl.Active, sl.ActivePID = true, 42
	srv.Slots["votr_1_to_0"] = sl
	srv.Slots["other_slot"] = Slot{Name: "other_slot", Plugin: "pgoutput", Database: "votr_1"}

	actions, active := Teardown(srv, []string{"votr_1"})
	want := []string{"- slot votr_1_to_0 on local:default", "- origin votr_1_from_0 on local:default", "- database votr_1 on local:default"}
	if got := lines(&Plan{Actions: actions}); !reflect.DeepEqual(got, want) {
		t.Errorf("teardown of votr_1: %q, want %q", got, want)
	}
	if len(active) != 1 || active[0].Holder() != "pid 42" {
		t.Errorf("active slots %v, want votr_1_to_0 held by pid 42", active)
	}
}

func small() *Plan {
	return &Plan{
		Topology: "examples/local.yaml",
		Actions: []Action{
			{Op: Create, Kind: KindDatabase, Region: intp(1), Server: server, Database: "votr_1", Target: "votr_1 on local:default", Detail: "region 1"},
			{Op: Change, Kind: KindSeed, Region: intp(1), Server: server, Database: "votr_1", Target: "votr_1 on local:default", Detail: "2 of 4 candidates present; add the rest"},
			{Op: Destroy, Kind: KindSlot, Feed: "2:0", Server: server, Database: "votr_2", Name: "votr_2_to_0", Target: "votr_2_to_0 on local:default"},
		},
		Notes: []string{"a note"},
	}
}

func TestWriteText(t *testing.T) {
	tests := []struct {
		name string
		plan *Plan
		want string
	}{{
		name: "small plan",
		plan: small(),
		want: `votr will perform these actions:

  + database  votr_1 on local:default       region 1
  ~ seed      votr_1 on local:default       2 of 4 candidates present; add the rest
  - slot      votr_2_to_0 on local:default  

Notes:
  - a note

Plan: 1 to add, 1 to change, 1 to destroy.
`,
	}, {
		name: "empty plan",
		plan: &Plan{},
		want: "No changes: the live servers and databases match the topology.\n\nPlan: 0 to add, 0 to change, 0 to destroy.\n",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tt.plan.WriteText(&b); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", b.String(), tt.want)
			}
		})
	}
}

func TestJSONRoundTrip(t *testing.T) {
	p := small()
	var b bytes.Buffer
	if err := p.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Plan
		Add, Change, Destroy int
	}
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&doc.Plan, p) {
		t.Errorf("decoded %+v, want %+v", doc.Plan, *p)
	}
	if doc.Add != 1 || doc.Change != 1 || doc.Destroy != 1 {
		t.Errorf("counts %d/%d/%d, want 1/1/1", doc.Add, doc.Change, doc.Destroy)
	}
	if a := doc.Actions[0]; a.Region == nil || *a.Region != 1 || a.String() != "+ database votr_1 on local:default (region 1)" {
		t.Errorf("first action decoded as %s", a)
	}
}

// A removed spoke's slots and origins name their feeds: with the region's
// id where its database is still in the topology, "?" where it is not.
func TestRemovalFeeds(t *testing.T) {
	st := spokeLeft(converged(topology(t, 1, 2)), 2)
	p, err := Compute(topology(t, 1), st)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, a := range p.Actions {
		if a.Kind == KindSlot || a.Kind == KindOrigin {
			got[a.Name] = a.Feed
		}
	}
	want := map[string]string{"votr_0_to_2": "0:2", "votr_2_to_0": "?:0", "votr_0_from_2": "2:0", "votr_2_from_0": "0:?"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("feeds of removed slots and origins: %v, want %v", got, want)
	}
}

// Lowering candidates below what the regions hold is refused, naming the
// regions, the number they hold and what to do; the key is never ignored.
func TestFewerCandidatesRefused(t *testing.T) {
	topo := topology(t, 1, 2) // candidates: 4
	for _, c := range []struct {
		name  string
		extra map[int]int
		want  []string
	}{
		{"none extra", nil, nil},
		{"one region", map[int]int{2: 2}, []string{"candidates: 4 is fewer than the regions hold (region 2 holds 6)", "set candidates: 6 (or more) again", "votr destroy"}},
		{"every region", map[int]int{0: 3, 1: 3, 2: 3}, []string{"region 0 (hub) holds 7, region 1 holds 7, region 2 holds 7", "set candidates: 7"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := converged(topo)
			for id, n := range c.extra {
				st.Region(id).Extra = n
			}
			p, err := Compute(topo, st)
			if c.want == nil {
				if err != nil || len(p.Actions) != 0 {
					t.Fatalf("converged plan: %v %v", err, lines(p))
				}
				return
			}
			if err == nil {
				t.Fatalf("plan accepted fewer candidates: %v", lines(p))
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// Plan tells where so many regions share a server that its walsenders read
// mostly other regions' WAL; where the regions have servers of their own
// (or too few share one) it says nothing.
func TestCrowdedServerNotes(t *testing.T) {
	parse := func(hub string, spokes ...string) *config.Topology {
		t.Helper()
		var b strings.Builder
		fmt.Fprintf(&b, "hub:\n  connect: %s\nspokes:\n", hub)
		for i, c := range spokes {
			fmt.Fprintf(&b, "  - id: %d\n    connect: %s\n", i+1, c)
		}
		b.WriteString("candidates: 4\nscript: ../scripts/votr.ts\n")
		topo, err := config.Parse("../examples/plan-test.yaml", []byte(b.String()), func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatal(err)
		}
		return topo
	}
	shared := func(t *config.Topology) *config.Topology { t.Sink.SharedHubSlot = true; return t }
	tests := []struct {
		name string
		topo *config.Topology
		want []string // substrings of the one note
	}{
		{"hub and 3 spokes on one server", parse("local", "local", "local", "local"), nil},
		{"hub and 4 spokes on one server", parse("local", "local", "local", "local", "local"),
			[]string{"server local:default holds 5 regions (0 (hub), 1, 2, 3, 4): each of the 8 feeds reading from it has a walsender that reads the WAL of all 5 regions",
				"sink.sharedHubSlot: true makes the hub's 4 outbound feeds read one slot"}},
		{"hub and 4 spokes on one server, the hub's outbound feeds through one slot", shared(parse("local", "local", "local", "local", "local")),
			[]string{"server local:default holds 5 regions (0 (hub), 1, 2, 3, 4)"}},
		{"5 spokes on one server, the hub on its own", parse("local:hub", "local", "local", "local", "local", "local"),
			[]string{"server local:default holds 5 regions (1, 2, 3, 4, 5): each of the 5 feeds reading from it"}},
		{"a server per region", parse("local:h", "local:a", "local:b", "local:c", "local:d", "local:e"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := crowdedServerNotes(tt.topo)
			if len(got) != min(len(tt.want), 1) {
				t.Fatalf("notes %q, want %d", got, min(len(tt.want), 1))
			}
			for _, w := range tt.want {
				if !strings.Contains(got[0], w) {
					t.Errorf("note %q, want it to contain %q", got[0], w)
				}
			}
			if tt.topo.Sink.SharedHubSlot && len(got) > 0 && strings.Contains(got[0], "sharedHubSlot") {
				t.Errorf("note %q suggests sharedHubSlot, which is on", got[0])
			}
		})
	}
}
