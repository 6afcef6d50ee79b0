package sink

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/votr-dev/votr/script"
)

// testClock is a vector clock as merges return it: nine regions, each
// with two counters of the given number type.
func testClock(num func(int) any) map[string]any {
	m := make(map[string]any, 9)
	for r := range 9 {
		m[strconv.Itoa(r)] = map[string]any{"c": num(40 + r), "n": num(120 + r)}
	}
	return m
}

func asFloat(i int) any { return float64(i) }
func asInt64(i int) any { return int64(i) }

// nestedArrays is n arrays, one inside the other, around a 1.
func nestedArrays(n int) any {
	var v any = float64(1)
	for range n {
		v = []any{v}
	}
	return v
}

// manyKeys is a map of n keys, more than object sorts without allocating
// when n > smallMapKeys.
func manyKeys(n int) map[string]any {
	m := make(map[string]any, n)
	for i := range n {
		m["k"+strconv.Itoa(i)] = map[string]any{"i": i, "f": float64(i) / 4}
	}
	return m
}

type encodeCase struct {
	name string
	v    any
	fast bool // encodeJSON must write it (else it must leave it to json.Marshal)
}

func encodeCases() []encodeCase {
	negZero := math.Copysign(0, -1)
	type plain struct{ A int }
	type myString string
	cases := []encodeCase{
		{"nil", nil, true},
		{"true", true, true},
		{"false", false, true},

		{"empty string", "", true},
		{"printable ASCII", " !#$%'()*+,-./09:;=?@AZ[]^_`az{|}~", true},
		{"quote", `a"b`, false},
		{"backslash", `a\b`, false},
		{"less than", "a<b", false},
		{"greater than", "a>b", false},
		{"ampersand", "a&b", false},
		{"NUL", "a\x00b", false},
		{"tab", "a\tb", false},
		{"unit separator", "a\x1fb", false},
		{"DEL", "a\x7fb", false},
		{"non-ASCII", "é", false},
		{"U+2028", "a\u2028b", false},
		{"U+2029", "a\u2029b", false},
		{"invalid UTF-8", "a\xffb", false},

		{"zero", float64(0), true},
		{"negative zero", negZero, true},
		{"1e-6", 1e-6, true},
		{"-1e-6", -1e-6, true},
		{"9.99e-7", 9.99e-7, true},
		{"1e-7", 1e-7, true},
		{"1e-10", 1e-10, true},
		{"1e-100", 1e-100, true},
		{"smallest denormal", 5e-324, true},
		{"1e20", 1e20, true},
		{"just below 1e21", math.Nextafter(1e21, 0), true},
		{"1e21", 1e21, true},
		{"-1e21", -1e21, true},
		{"1e100", 1e100, true},
		{"max float64", math.MaxFloat64, true},
		{"123456789012345680000", 123456789012345680000.0, true},
		{"0.1", 0.1, true},
		{"-1.5", -1.5, true},
		{"1/3", 1.0 / 3, true},
		{"2^53+2", float64(1<<53 + 2), true},
		{"whole", 12345.0, true},
		{"negative whole", -7.0, true},
		{"1e15", 1e15, true},
		{"2^53-1", float64(1<<53 - 1), true},
		{"-(2^53-1)", -float64(1<<53 - 1), true},
		{"2^53", float64(1 << 53), true},
		// Whole, but past the integers a float64 holds exactly: the
		// shortest form ends in zeros, not in the integer's digits.
		{"2^62", float64(1 << 62), true},
		{"2.78e18", 2777777777777777664.0, true},
		{"NaN", math.NaN(), false},
		{"+Inf", math.Inf(1), false},
		{"-Inf", math.Inf(-1), false},
		{"float32", float32(1.5), false},

		{"int 0", 0, true},
		{"int -1", -1, true},
		{"int8 min", int8(math.MinInt8), true},
		{"int16 min", int16(math.MinInt16), true},
		{"int32 min", int32(math.MinInt32), true},
		{"int64 min", int64(math.MinInt64), true},
		{"int64 max", int64(math.MaxInt64), true},
		{"large int", int64(123456789012345678), true},
		{"uint max", uint(math.MaxUint), true},
		{"uint8 max", uint8(math.MaxUint8), true},
		{"uint16 max", uint16(math.MaxUint16), true},
		{"uint32 max", uint32(math.MaxUint32), true},
		{"uint64 max", uint64(math.MaxUint64), true},
		{"uintptr", uintptr(1), false},

		{"Number int", json.Number("12"), true},
		{"Number zero", json.Number("0"), true},
		{"Number full", json.Number("-0.5e+10"), true},
		{"Number big", json.Number("123456789012345678901234567890E-300"), true},
		{"Number empty", json.Number(""), false}, // json.Marshal writes 0
		{"Number leading zero", json.Number("01"), false},
		{"Number trailing dot", json.Number("1."), false},
		{"Number bare exponent", json.Number("1e"), false},
		{"Number plus", json.Number("+1"), false},
		{"Number minus", json.Number("-"), false},
		{"Number word", json.Number("NaN"), false},
		{"Number space", json.Number("1 "), false},

		{"float64 clock", testClock(asFloat), true},
		{"int64 clock", testClock(asInt64), true},
		{"empty map", map[string]any{}, true},
		{"many keys", manyKeys(3 * smallMapKeys), true},
		{"nil map", map[string]any(nil), true},
		{"key order", map[string]any{"b": 1, "a": 2, "B": 3, "aa": 4, "": 5, "10": 6, "9": 7, "~": 8, " ": 9}, true},
		{"nested", map[string]any{"x": map[string]any{"y": []any{1.5, "s", nil, true, map[string]any{}}}, "z": []any{}}, true},
		{"nested nil", map[string]any{"m": map[string]any(nil), "a": []any(nil)}, true},
		{"Row", script.Row{"b": int64(1), "a": script.Row{"c": "d"}}, true},
		{"nil Row", script.Row(nil), true},
		{"key with <", map[string]any{"a<b": 1}, false},
		{"key with quote", map[string]any{`a"b`: 1}, false},
		{"non-ASCII key", map[string]any{"é": 1}, false},
		{"invalid UTF-8 key", map[string]any{"\xff": 1}, false},
		{"NaN in map", map[string]any{"a": 1, "b": math.NaN()}, false},
		{"HTML deep in map", map[string]any{"a": map[string]any{"b": []any{"<"}}}, false},

		{"nil slice", []any(nil), true},
		{"empty slice", []any{}, true},
		{"mixed slice", []any{nil, false, "x", -0.25, int64(7), json.Number("3"), []any{1}}, true},
		{"64 levels", nestedArrays(64), true},
		{"65 levels", nestedArrays(65), false},
		{"Inf in slice", []any{1, math.Inf(1)}, false},

		{"bytes", []byte("x"), false},
		{"map cycle", cyclicMap(), false},
		{"time", time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), false},
		{"struct", plain{A: 1}, false},
		{"map of int", map[string]int{"a": 1}, false},
		{"slice of string", []string{"a"}, false},
		{"pointer", new(int), false},
		{"named string", myString("a"), false},
		{"struct in map", map[string]any{"a": plain{A: 1}}, false},
	}
	return cases
}

func TestEncodeJSONAsMarshal(t *testing.T) {
	for _, c := range encodeCases() {
		t.Run(c.name, func(t *testing.T) {
			_, ok := encodeJSON(c.v)
			if ok != c.fast {
				t.Errorf("encodeJSON(%#v): ok = %v, want %v", c.v, ok, c.fast)
			}
			checkEncodeJSON(t, c.v)
		})
	}
}

// TestEncodeValueJSON checks encodeValue gives json.Marshal's text on both
// of its paths, and json.Marshal's error where there is one.
func TestEncodeValueJSON(t *testing.T) {
	for _, c := range encodeCases() {
		if c.v == nil {
			continue // SQL NULL
		}
		want, wantErr := json.Marshal(c.v)
		got, notNull, err := encodeValue(oidJSONB, c.v)
		if !notNull || (err != nil) != (wantErr != nil) {
			t.Errorf("%s: encodeValue: notNull %v, error %v; json.Marshal's error %v", c.name, notNull, err, wantErr)
		} else if err == nil && !bytes.Equal(got, want) {
			t.Errorf("%s: encodeValue = %s, json.Marshal = %s", c.name, got, want)
		}
	}
}

// checkEncodeJSON fails t if encodeJSON writes v other than as
// json.Marshal does.
func checkEncodeJSON(t *testing.T, v any) {
	t.Helper()
	got, ok := encodeJSON(v)
	if !ok {
		return
	}
	want, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encodeJSON(%#v) = %s, but json.Marshal fails: %v", v, got, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("encodeJSON(%#v) = %s, json.Marshal = %s", v, got, want)
	}
}

func FuzzEncodeJSON(f *testing.F) {
	f.Add([]byte(`{"0":{"c":40,"n":120},"1":{"c":41.5,"n":-121}}`), 1e21, int64(-1), "a<b")
	f.Add([]byte(`[1e-7, 0.000001, -0, "x", null, true, {"": []}]`), 9.99e-7, int64(math.MaxInt64), "")
	f.Add([]byte(`{"b": "\u2028", "a": "\u00e9", "c": 123456789012345678901234567890}`), math.Copysign(0, -1), int64(math.MinInt64), "01")
	f.Fuzz(func(t *testing.T, data []byte, x float64, n int64, s string) {
		checkEncodeJSON(t, x)
		checkEncodeJSON(t, n)
		checkEncodeJSON(t, s)
		checkEncodeJSON(t, json.Number(s))
		checkEncodeJSON(t, map[string]any{s: x, "n": n, "": []any{s, x}})
		var doc any
		if json.Unmarshal(data, &doc) == nil {
			checkEncodeJSON(t, doc)
			checkEncodeJSON(t, integral(doc)) // as goja exports whole numbers
		}
		d := json.NewDecoder(bytes.NewReader(data))
		d.UseNumber()
		var numDoc any
		if d.Decode(&numDoc) == nil {
			checkEncodeJSON(t, numDoc)
		}
	})
}

// integral gives v with its whole float64s in int64's range as int64s, as
// script.fromJS returns them.
func integral(v any) any {
	switch x := v.(type) {
	case float64:
		if x == math.Trunc(x) && x >= -(1<<63) && x < 1<<63 {
			return int64(x)
		}
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = integral(e)
		}
		return m
	case []any:
		a := make([]any, len(x))
		for i, e := range x {
			a[i] = integral(e)
		}
		return a
	}
	return v
}

// BenchmarkEncodeClock writes a nine-region clock, as the sink writes
// every merged totals row's, with and without the fast path.
func BenchmarkEncodeClock(b *testing.B) {
	for _, num := range []struct {
		name string
		f    func(int) any
	}{{"float64", asFloat}, {"int64", asInt64}} {
		clock := testClock(num.f)
		b.Run(num.name+"/encodeJSON", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := encodeJSON(clock); !ok {
					b.Fatal("clock left to json.Marshal")
				}
			}
		})
		b.Run(num.name+"/json.Marshal", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := json.Marshal(clock); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// cyclicMap contains itself: past the depth bound it goes to json.Marshal,
// which reports the cycle.
func cyclicMap() map[string]any {
	m := map[string]any{}
	m["a"] = m
	return m
}
