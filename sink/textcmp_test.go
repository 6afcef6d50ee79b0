package sink

import (
	"slices"
	"strings"
	"testing"
)

// tupleSegment holds one tuple of the given values (nil: NULL, toast: not
// sent) in source column order.
func tupleSegment(vals ...*string) *segment {
	s := &segment{}
	for _, v := range vals {
		switch {
		case v == nil:
			s.fields = append(s.fields, field{kind: fieldNull})
		case *v == toastMark:
			s.fields = append(s.fields, field{kind: fieldToast})
		default:
			s.fields = append(s.fields, field{off: int32(len(s.buf)), n: int32(len(*v)), kind: fieldText})
			s.buf = append(s.buf, *v...)
		}
	}
	return s
}

const toastMark = "\x00toast"

func str(s string) *string { return &s }

// TestTextEqual: the sink's own comparison of a target row (text, in the
// target's column order) with a change's tuple (in the source's order)
// covers exactly the columns textDecides, as the read statement compares
// the others.
func TestTextEqual(t *testing.T) {
	// The source sends (whence, score, id); the target's order is
	// (id, note, score, whence), note being the target's alone.
	rel := &relation{name: "t", namespace: "public", identity: identityFull, streamed: true, cols: []relColumn{
		{name: "whence", typ: oidJSONB, typmod: noTypmod},
		{name: "score", typ: oidFloat8, typmod: noTypmod},
		{name: "id", typ: oidUUID, typmod: noTypmod},
	}}
	tbl, err := newTable(rel, []targetColumn{
		{name: "id", cast: "uuid", typ: oidUUID, key: true},
		{name: "note", cast: "text", typ: oidText},
		{name: "score", cast: "double precision", typ: oidFloat8},
		{name: "whence", cast: "jsonb", typ: oidJSONB},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tbl.textCmp, []bool{true, false, true}) {
		t.Fatalf("textCmp = %v, want whence and id compared by the sink, score by the server", tbl.textCmp)
	}
	// The read statements compare only score, and nothing of it when the
	// images are compared on the key alone.
	if got, want := tbl.matchSQL(tbl.every, "n"), tbl.match(tbl.cols, []int{1}, "n", true); got != want {
		t.Errorf("matchSQL over every column = %q, want the score comparison alone, %q", got, want)
	}
	if got := tbl.matchSQL(tbl.keys, "o"); got != "true" {
		t.Errorf("matchSQL over the key = %q, want true (the sink compares uuids)", got)
	}

	const id = "8c0a5a1e-1f0e-4b8e-9d3c-0a6b6f1d2e3f"
	target := func(whence *string, score string) [][]byte {
		row := [][]byte{[]byte(id), []byte("a note"), []byte(score), nil}
		if whence != nil {
			row[3] = []byte(*whence)
		}
		return row
	}
	tests := []struct {
		name   string
		target [][]byte
		tuple  *segment
		idx    []int
		want   bool
	}{
		{"same texts", target(str(`{"1": 2}`), "1.5"), tupleSegment(str(`{"1": 2}`), str("1.5"), str(id)), tbl.every, true},
		{"another clock", target(str(`{"1": 3}`), "1.5"), tupleSegment(str(`{"1": 2}`), str("1.5"), str(id)), tbl.every, false},
		// The server's to decide: the sink does not look at it.
		{"another score", target(str(`{"1": 2}`), "9"), tupleSegment(str(`{"1": 2}`), str("1.5"), str(id)), tbl.every, true},
		{"NULL and NULL", target(nil, "1"), tupleSegment(nil, str("1"), str(id)), tbl.every, true},
		{"NULL and JSON null", target(str("null"), "1"), tupleSegment(nil, str("1"), str(id)), tbl.every, false},
		{"JSON null and NULL", target(nil, "1"), tupleSegment(str("null"), str("1"), str(id)), tbl.every, false},
		// A value not sent counts as NULL, as the read statement gets it.
		{"not sent, target NULL", target(nil, "1"), tupleSegment(str(toastMark), str("1"), str(id)), tbl.every, true},
		{"not sent, target a value", target(str(`{}`), "1"), tupleSegment(str(toastMark), str("1"), str(id)), tbl.every, false},
		{"another key", target(str(`{}`), "1"), tupleSegment(str(`{}`), str("1"), str(strings.Replace(id, "8c", "9c", 1))), tbl.every, false},
		// Compared on the key alone (an identity that is not FULL).
		{"key only", target(str(`{"1": 3}`), "1"), tupleSegment(str(`{"1": 2}`), str("2"), str(id)), tbl.keys, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tbl.textEqual(tc.target, tc.tuple, 0, tc.idx); got != tc.want {
				t.Errorf("textEqual = %v, want %v", got, tc.want)
			}
		})
	}
}
