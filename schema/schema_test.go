package schema

import (
	"regexp"
	"strconv"
	"testing"
)

func TestNames(t *testing.T) {
	// Slots and origins are per server, so their names must keep regions
	// of one server apart, and fit PostgreSQL's limits (63 bytes; slots:
	// lower-case letters, digits and underscores only).
	slotName := regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	for _, c := range []struct {
		got, want string
	}{
		{Slot("votr_1", 0), "votr_1_to_0"},
		{Slot("votr_0", 12), "votr_0_to_12"},
		{Origin("votr_0", 3), "votr_0_from_3"},
		{FeedName(2, 0), "2:0"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	long := "a23456789012345678901234567890123456789012345678" // 48: config's limit
	if s := Slot(long, 999999); !slotName.MatchString(s) {
		t.Errorf("slot name %q for the longest database name is not a valid slot name", s)
	}
	if Slot("votr_1", 0) == Slot("votr_2", 0) || Origin("votr_0", 1) == Origin("votr_1", 1) {
		t.Error("regions on one server share a slot or origin name")
	}
}

func TestCandidatesAreDeterministicAndDistinct(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	a, b := Candidates(1000), Candidates(1000)
	ids, names := map[string]bool{}, map[string]bool{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("candidate %d differs between two calls: %+v vs %+v", i, a[i], b[i])
		}
		if !uuid.MatchString(a[i].ID) {
			t.Errorf("candidate %d: id %q is not a UUID", i, a[i].ID)
		}
		if ids[a[i].ID] || names[a[i].Name] {
			t.Errorf("candidate %d repeats an id or name: %+v", i, a[i])
		}
		ids[a[i].ID], names[a[i].Name] = true, true
	}
	// Seeding fewer candidates yields a prefix, so regions seeded with
	// different counts still agree on the ones they share.
	if few := Candidates(5); few[4] != a[4] {
		t.Errorf("Candidates(5)[4] = %+v, want %+v", few[4], a[4])
	}
}

func TestCreateIsTheRegionsOwn(t *testing.T) {
	// The region id is baked into the defaults and the clock trigger.
	for _, id := range []int{0, 7} {
		found := 0
		want := regexp.MustCompile(`me TEXT := '` + strconv.Itoa(id) + `'`)
		for _, stmt := range Create(id) {
			if want.MatchString(stmt) {
				found++
			}
		}
		if found != 1 {
			t.Errorf("Create(%d): the clock function for region %d appears %d times, want 1", id, id, found)
		}
	}
}

func TestParseNames(t *testing.T) {
	for _, c := range []struct {
		name  string
		parse func(string) (string, int, bool)
		db    string
		id    int
		ok    bool
	}{
		{Slot("votr_1", 0), ParseSlot, "votr_1", 0, true},
		{Slot("votr_0", 12), ParseSlot, "votr_0", 12, true},
		{Slot("a_to_b", 3), ParseSlot, "a_to_b", 3, true},
		{Slot("db_to_7", 3), ParseSlot, "db_to_7", 3, true},
		{Origin("votr_0", 3), ParseOrigin, "votr_0", 3, true},
		{Origin("x_from_2", 40), ParseOrigin, "x_from_2", 40, true},
		{"votr_0_from_3", ParseSlot, "", 0, false},
		{"votr_1_to_0", ParseOrigin, "", 0, false},
		{"_to_3", ParseSlot, "", 0, false},
		{"votr_1_to_", ParseSlot, "", 0, false},
		{"votr_1_to_x", ParseSlot, "", 0, false},
		{"votr_1_to_+1", ParseSlot, "", 0, false},
		{"votr_1_to_-1", ParseSlot, "", 0, false},
		{"votr_1_to_99999999999999999999", ParseSlot, "", 0, false},
		{"pg_16384_sync_16390", ParseSlot, "", 0, false},
		{"", ParseOrigin, "", 0, false},
	} {
		db, id, ok := c.parse(c.name)
		if db != c.db || id != c.id || ok != c.ok {
			t.Errorf("parse %q = %q, %d, %v; want %q, %d, %v", c.name, db, id, ok, c.db, c.id, c.ok)
		}
	}
}
