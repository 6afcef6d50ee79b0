package sink

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"

	"github.com/votr-dev/votr/script"
)

// encodeJSON writes v as JSON text, byte for byte as json.Marshal does, for
// the plain values merge results hold: nil, bool, printable-ASCII strings,
// finite float64, Go integers, valid json.Number, and map[string]any
// (script.Row) and []any of those. ok is false for anything else, which the
// caller leaves to json.Marshal.
//
// It exists because json.Marshal (reflection, a sorted key slice per map)
// was about 4.6% of the sink's CPU, nearly all of it spent writing small
// vector clocks such as {"0":{"c":40,"n":120},...} to json/jsonb columns.
func encodeJSON(v any) ([]byte, bool) {
	e := jsonEncoder{buf: make([]byte, 0, encodeSizeHint(v))}
	if !e.value(v, 0) {
		return nil, false
	}
	return e.buf, true
}

// jsonEncoder is encodeJSON's state: the text written so far.
type jsonEncoder struct {
	buf []byte
}

// encodeSizeHint guesses the length of v's text from its top level, so
// that a clock's text is usually written without growing the buffer.
func encodeSizeHint(v any) int {
	switch x := v.(type) {
	case map[string]any:
		return 2 + 24*len(x) // a clock entry, `"0":{"c":40,"n":120},`, is 22
	case script.Row:
		return 2 + 24*len(x)
	case []any:
		return 2 + 12*len(x)
	}
	return 24
}

// value appends v; false means v (or something in it) is outside the
// subset, and the buffer is then to be dropped.
func (e *jsonEncoder) value(v any, depth int) bool {
	switch x := v.(type) {
	case nil:
		e.buf = append(e.buf, "null"...)
	case bool:
		e.buf = strconv.AppendBool(e.buf, x)
	case string:
		return e.string(x)
	case float64:
		return e.float(x)
	case int64:
		e.buf = strconv.AppendInt(e.buf, x, 10)
	case int:
		e.buf = strconv.AppendInt(e.buf, int64(x), 10)
	case int32:
		e.buf = strconv.AppendInt(e.buf, int64(x), 10)
	case int16:
		e.buf = strconv.AppendInt(e.buf, int64(x), 10)
	case int8:
		e.buf = strconv.AppendInt(e.buf, int64(x), 10)
	case uint64:
		e.buf = strconv.AppendUint(e.buf, x, 10)
	case uint:
		e.buf = strconv.AppendUint(e.buf, uint64(x), 10)
	case uint32:
		e.buf = strconv.AppendUint(e.buf, uint64(x), 10)
	case uint16:
		e.buf = strconv.AppendUint(e.buf, uint64(x), 10)
	case uint8:
		e.buf = strconv.AppendUint(e.buf, uint64(x), 10)
	case json.Number:
		return e.number(x)
	case map[string]any:
		return e.object(x, depth)
	case script.Row:
		// A named map[string]any without methods: json.Marshal writes it
		// as it writes the plain map.
		return e.object(x, depth)
	case []any:
		return e.array(x, depth)
	default:
		return false
	}
	return true
}

// plainJSONString reports whether json.Marshal writes s as its bytes
// between quotes: printable ASCII without the quote, the backslash or the
// characters it escapes for HTML. Other strings (control characters,
// non-ASCII, invalid UTF-8) get escapes or replacements left to it; so
// does DEL, which it writes as it is, to keep the rule one range.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e:
			return false
		case c == '"' || c == '\\' || c == '<' || c == '>' || c == '&':
			return false
		}
	}
	return true
}

func (e *jsonEncoder) string(s string) bool {
	if !plainJSONString(s) {
		return false
	}
	e.buf = append(e.buf, '"')
	e.buf = append(e.buf, s...)
	e.buf = append(e.buf, '"')
	return true
}

// float writes f as json.Marshal does (ECMAScript's number to string):
// plain decimals, but exponent form for magnitudes below 1e-6 or from 1e21
// up, with no leading zero in the exponent. NaN and infinities are errors
// to json.Marshal, so they go to it to report.
func (e *jsonEncoder) float(f float64) bool {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return false
	}
	a := math.Abs(f)
	if a < 1<<53 && a == math.Trunc(a) && !(f == 0 && math.Signbit(f)) {
		// A whole number with an exact int64 (a clock's counter): its
		// shortest round-trip form is all its digits, which AppendInt
		// writes faster. Negative zero is left to AppendFloat ("-0").
		e.buf = strconv.AppendInt(e.buf, int64(f), 10)
		return true
	}
	format := byte('f')
	if a != 0 && (a < 1e-6 || a >= 1e21) {
		format = 'e'
	}
	e.buf = strconv.AppendFloat(e.buf, f, format, -1, 64)
	if format == 'e' {
		e.buf = trimExponentZero(e.buf)
	}
	return true
}

// trimExponentZero turns strconv's two-digit exponent "e-07" at the end
// of b into "e-7". Only small negative exponents have that zero here:
// exponent form is used for magnitudes of 1e21 and more or below 1e-6.
func trimExponentZero(b []byte) []byte {
	n := len(b)
	if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
		b[n-2] = b[n-1]
		return b[:n-1]
	}
	return b
}

// number writes a json.Number as json.Marshal does, as its text, when
// that text is a JSON number; json.Marshal reports other texts as errors
// (and writes the empty Number as 0), which it is left to do.
func (e *jsonEncoder) number(n json.Number) bool {
	if !isJSONNumber(string(n)) {
		return false
	}
	e.buf = append(e.buf, n...)
	return true
}

// isJSONNumber reports whether s is a number of JSON's grammar:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func isJSONNumber(s string) bool {
	i := 0
	digits := func() bool {
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i > start
	}
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case !digits():
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if !digits() {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	return i == len(s)
}

// object writes m with its keys in bytewise order, as json.Marshal sorts
// them; a nil map is null. Nesting deeper than maxJSONDepth goes to
// json.Marshal, which also detects cycles.
func (e *jsonEncoder) object(m map[string]any, depth int) bool {
	if m == nil {
		e.buf = append(e.buf, "null"...)
		return true
	}
	if depth >= maxJSONDepth {
		return false
	}
	var small [smallMapKeys]string
	keys := small[:0]
	if len(m) > smallMapKeys {
		keys = make([]string, 0, len(m))
	}
	keys = appendSortedKeys(keys, m)
	e.buf = append(e.buf, '{')
	for i, k := range keys {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		if !e.string(k) {
			return false
		}
		e.buf = append(e.buf, ':')
		if !e.value(m[k], depth+1) {
			return false
		}
	}
	e.buf = append(e.buf, '}')
	return true
}

// smallMapKeys is how many keys object sorts in an array in its frame,
// without allocating: a clock's maps, of regions and of counters, fit.
const smallMapKeys = 16

// appendSortedKeys appends m's keys to keys, in bytewise order.
func appendSortedKeys(keys []string, m map[string]any) []string {
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// array writes a; a nil slice is null, as json.Marshal writes it.
func (e *jsonEncoder) array(a []any, depth int) bool {
	if a == nil {
		e.buf = append(e.buf, "null"...)
		return true
	}
	if depth >= maxJSONDepth {
		return false
	}
	e.buf = append(e.buf, '[')
	for i, v := range a {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		if !e.value(v, depth+1) {
			return false
		}
	}
	e.buf = append(e.buf, ']')
	return true
}
