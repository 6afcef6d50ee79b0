package sink

import (
	"encoding/binary"
	"math"
	"reflect"
	"strconv"
	"testing"

	"github.com/votr-dev/votr/script"
)

func TestValueRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		typ  uint32
		text string
		want any
	}{
		{"int4", oidInt4, "42", int64(42)},
		{"int8 negative", oidInt8, "-9000000000", int64(-9000000000)},
		{"bool", oidBool, "t", true},
		{"float8", oidFloat8, "1.5", 1.5},
		{"jsonb clock", oidJSONB, `{"1": {"c": 3, "n": 7}}`, map[string]any{"1": map[string]any{"c": 3.0, "n": 7.0}}},
		{"uuid stays text", 2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"numeric stays text", oidNumeric, "12.50", "12.50"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := decodeValue(tc.typ, []byte(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			if !sameValue(tc.typ, v, tc.want) {
				t.Fatalf("decoded %#v, want %#v", v, tc.want)
			}
			text, ok, err := encodeValue(tc.typ, v)
			if err != nil || !ok {
				t.Fatalf("encode: %v %v", ok, err)
			}
			back, err := decodeValue(tc.typ, text)
			if err != nil {
				t.Fatal(err)
			}
			if !sameValue(tc.typ, back, v) {
				t.Fatalf("round trip %q gave %#v, want %#v", text, back, v)
			}
		})
	}
}

func TestSameValue(t *testing.T) {
	for _, tc := range []struct {
		name string
		typ  uint32
		a, b any
		same bool
	}{
		{"goja int vs decoded jsonb number", oidJSONB, map[string]any{"c": int64(3)}, map[string]any{"c": 3.0}, true},
		{"different clocks", oidJSONB, map[string]any{"c": int64(3)}, map[string]any{"c": 4.0}, false},
		{"integral float for bigint", oidInt8, 7.0, int64(7), true},
		{"null and value", oidInt4, nil, int64(0), false},
		{"both null", oidText, nil, nil, true},
		{"text", oidText, "a", "b", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sameValue(tc.typ, tc.a, tc.b); got != tc.same {
				t.Fatalf("sameValue(%#v, %#v) = %v", tc.a, tc.b, got)
			}
		})
	}
}

func TestEncodeValueRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		typ  uint32
		v    any
	}{
		{"object into int column", oidInt4, map[string]any{"x": 1}},
		{"NaN into bigint", oidInt8, nan()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := encodeValue(tc.typ, tc.v); err == nil {
				t.Fatalf("encodeValue(%#v) succeeded", tc.v)
			}
		})
	}
}

func nan() float64 { z := 0.0; return z / z }

// The binary text[] a statement receives: header, then length-prefixed
// elements, -1 for NULL.
func TestTextArrayEncoding(t *testing.T) {
	var a textArray
	a.reset()
	a.add([]byte("ab"))
	a.addNull()
	a.add(nil)
	b := a.bytes()
	u32 := func(off int) int32 { return int32(binary.BigEndian.Uint32(b[off:])) }
	for _, c := range []struct {
		off  int
		want int32
	}{{0, 1}, {4, 1}, {8, oidText}, {12, 3}, {16, 1}, {20, 2}, {26, -1}, {30, 0}} {
		if got := u32(c.off); got != c.want {
			t.Errorf("word at %d = %d, want %d", c.off, got, c.want)
		}
	}
	if string(b[24:26]) != "ab" || len(b) != 34 {
		t.Errorf("encoding %x", b)
	}
}

// TestJSONEqualAgreesWithEncoding checks the structural comparison against
// the trip through encoding/json it replaces, and that it decides the
// shapes a merge produces (a clock from goja against one decoded from
// jsonb) rather than leaving them to that trip.
func TestJSONEqualAgreesWithEncoding(t *testing.T) {
	clock := func(c, n any) map[string]any {
		return map[string]any{"1": map[string]any{"c": c, "n": n}, "2": map[string]any{"c": 1.0, "n": 4.0}}
	}
	for _, tc := range []struct {
		name    string
		a, b    any
		decided bool
	}{
		{"same clock, goja ints against decoded floats", clock(int64(3), int64(7)), clock(3.0, 7.0), true},
		{"one entry differs", clock(int64(3), int64(8)), clock(3.0, 7.0), true},
		{"an entry missing", map[string]any{"1": 1.0}, map[string]any{"1": 1.0, "2": 2.0}, true},
		{"same size, other key", map[string]any{"1": 1.0}, map[string]any{"2": 1.0}, true},
		{"row against map", script.Row{"a": "x"}, map[string]any{"a": "x"}, true},
		{"nil map is null", map[string]any(nil), nil, true},
		{"nil slice is null", []any(nil), nil, true},
		{"empty object is not null", map[string]any{}, nil, true},
		{"arrays", []any{int64(1), "a", true, nil}, []any{1.0, "a", true, nil}, true},
		{"array order", []any{1.0, 2.0}, []any{2.0, 1.0}, true},
		{"number against its text", int64(1), "1", true},
		{"bool against number", true, 1.0, true},
		{"large int rounds as its text parses", int64(1<<53 + 1), float64(1 << 53), true},
		{"negative zero", 0.0, math.Copysign(0, -1), true},
		{"NaN is left to encoding/json", nan(), nan(), false},
		{"invalid UTF-8 is left to encoding/json", "\xff", "\xfe", false},
		{"invalid UTF-8 key is left to encoding/json", map[string]any{"\xff": 1.0}, map[string]any{"\xff": 1.0}, false},
		{"invalid keys that encode alike", map[string]any{"\xff": 1.0, "\xfe": 1.0}, map[string]any{"\ufffd": 1.0}, false},
		{"an invalid key meeting its replacement", map[string]any{"\xff": 1.0, "\ufffd": 1.0}, map[string]any{"\ufffd": 1.0}, false},
		{"an invalid key in the second map", map[string]any{"\ufffd": 1.0}, map[string]any{"\xff": 1.0}, false},
		{"float32 is left to encoding/json", float32(0.1), 0.1, false},
		{"unknown type is left to encoding/json", struct{ A int }{1}, map[string]any{"A": 1.0}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := reflect.DeepEqual(normalJSON(tc.a), normalJSON(tc.b))
			for _, pair := range [][2]any{{tc.a, tc.b}, {tc.b, tc.a}} {
				eq, ok := jsonEqual(pair[0], pair[1])
				if ok != tc.decided {
					t.Fatalf("jsonEqual(%#v, %#v) decided = %v, want %v", pair[0], pair[1], ok, tc.decided)
				}
				if ok && eq != want {
					t.Fatalf("jsonEqual(%#v, %#v) = %v; through encoding/json they are equal: %v", pair[0], pair[1], eq, want)
				}
				// (sameValue takes a nil at the top for SQL NULL.)
				if pair[0] == nil || pair[1] == nil {
					continue
				}
				if got := sameValue(oidJSONB, pair[0], pair[1]); got != want {
					t.Fatalf("sameValue(%#v, %#v) = %v, want %v", pair[0], pair[1], got, want)
				}
			}
		})
	}
}

// BenchmarkSameValueClock is the comparison resolve makes for every merged
// totals row: its clock (nine regions) against the target's.
func BenchmarkSameValueClock(b *testing.B) {
	merged, target := map[string]any{}, map[string]any{}
	for r := range 9 {
		k := strconv.Itoa(r)
		merged[k] = map[string]any{"c": int64(100 + r), "n": int64(500 + r)}
		target[k] = map[string]any{"c": float64(100 + r), "n": float64(500 + r)}
	}
	b.ReportAllocs()
	for b.Loop() {
		if !sameValue(oidJSONB, merged, target) {
			b.Fatal("clocks differ")
		}
	}
}
