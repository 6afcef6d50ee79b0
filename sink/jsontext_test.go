package sink

import (
	"encoding/json"
	"reflect"
	"testing"
)

// jsonInputs are texts decodeJSON must decode as encoding/json does: the
// plain subset it decodes itself, and what it leaves to encoding/json.
var jsonInputs = []string{
	// What jsonb prints for VOTR's clocks.
	`{"0": {"c": 1000, "n": 5000}, "1": {"c": 1001, "n": 5005}, "8": {"c": 3, "n": 0}}`,
	`{"1": 42}`, `{}`, `[]`, `[1, "a", null, true, false, {"x": []}]`,
	`0`, `-0`, `1.5`, `-12.25e+3`, `1E-7`, `123456789012345678901234567890`, `0.1`,
	`"text"`, `""`, `null`, `true`, `false`, " \t\n\r{ \"a\" : 1 } ",
	`{"a": 1, "a": 2}`, // a repeated key: the last wins
	// Left to encoding/json: escapes, non-ASCII, out of range, malformed.
	`"a\"b"`, `"\u00e9\ud83d\ude00"`, `"é"`, "\"\xff\"", `1e400`, `-1e400`,
	`01`, `1.`, `.5`, `-`, `+1`, `1e`, `{"a" 1}`, `{"a": 1,}`, `[1,]`, `[1 2]`,
	`{`, `[`, `"open`, `tru`, `nul`, `{"a": 1} x`, `{1: 2}`, "\"a\tb\"", ``, ` `,
	`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
}

func TestDecodeJSONAsEncodingJSON(t *testing.T) {
	for _, in := range jsonInputs {
		checkDecodeJSON(t, in)
	}
}

func FuzzDecodeJSON(f *testing.F) {
	for _, in := range jsonInputs {
		f.Add(in)
	}
	f.Fuzz(checkDecodeJSON)
}

func checkDecodeJSON(t *testing.T, in string) {
	var want any
	wantErr := json.Unmarshal([]byte(in), &want)
	got, err := decodeJSON([]byte(in))
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("decodeJSON(%q): error %v, encoding/json's %v", in, err, wantErr)
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("decodeJSON(%q) = %#v, encoding/json gives %#v", in, got, want)
	}
}

func BenchmarkDecodeJSONClock(b *testing.B) {
	in := []byte(`{"0": {"c": 1000, "n": 5000}, "1": {"c": 1001, "n": 5005}, "2": {"c": 1002, "n": 5010}, "3": {"c": 1003, "n": 5015}, "4": {"c": 1004, "n": 5020}, "5": {"c": 1005, "n": 5025}, "6": {"c": 1006, "n": 5030}, "7": {"c": 1007, "n": 5035}, "8": {"c": 1008, "n": 5040}}`)
	b.Run("decodeJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeJSON(in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v any
			if err := json.Unmarshal(in, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
}
