package sink

import (
	"encoding/binary"
	"testing"
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
