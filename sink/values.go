package sink

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/votr-dev/votr/script"
)

// Type OIDs the sink converts to script values; every other type reaches a
// script as its text form.
const (
	oidBool    = 16
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidText    = 25
	oidJSON    = 114
	oidFloat4  = 700
	oidFloat8  = 701
	oidJSONB   = 3802
	oidOID     = 26
	oidNumeric = 1700
	oidUUID    = 2950
)

// textArray builds the binary wire form of a one-dimensional text[]
// parameter without making a Go string per element: the fast path sends
// pgoutput's text values straight through and lets the server cast them.
type textArray struct {
	buf     []byte
	n       int
	hasNull bool
}

const arrayHeaderLen = 20

func (a *textArray) reset() {
	a.buf = append(a.buf[:0], make([]byte, arrayHeaderLen)...)
	a.n = 0
	a.hasNull = false
}

func (a *textArray) add(v []byte) {
	a.buf = binary.BigEndian.AppendUint32(a.buf, uint32(len(v)))
	a.buf = append(a.buf, v...)
	a.n++
}

func (a *textArray) addNull() {
	a.buf = binary.BigEndian.AppendUint32(a.buf, math.MaxUint32) // -1
	a.hasNull = true
	a.n++
}

// bytes finishes the header and returns the encoded array.
func (a *textArray) bytes() []byte {
	h := a.buf[:arrayHeaderLen]
	binary.BigEndian.PutUint32(h[0:], 1) // dimensions
	var flags uint32
	if a.hasNull {
		flags = 1
	}
	binary.BigEndian.PutUint32(h[4:], flags)
	binary.BigEndian.PutUint32(h[8:], oidText)
	binary.BigEndian.PutUint32(h[12:], uint32(a.n))
	binary.BigEndian.PutUint32(h[16:], 1) // lower bound
	return a.buf
}

// decodeValue turns a value in PostgreSQL text form into what a script
// sees (see script.Row).
func decodeValue(typ uint32, text []byte) (any, error) {
	switch typ {
	case oidInt2, oidInt4, oidInt8, oidOID:
		return strconv.ParseInt(string(text), 10, 64)
	case oidBool:
		return len(text) > 0 && (text[0] == 't' || text[0] == 'T'), nil
	case oidFloat4, oidFloat8:
		return strconv.ParseFloat(string(text), 64)
	case oidJSON, oidJSONB:
		return decodeJSON(text)
	}
	return string(text), nil
}

// encodeValue is the inverse of decodeValue for values a script returns:
// it gives the text form the server casts to the column's type. ok is false
// for SQL NULL.
func encodeValue(typ uint32, v any) (text []byte, ok bool, err error) {
	if v == nil {
		return nil, false, nil
	}
	if typ == oidJSON || typ == oidJSONB {
		// encodeJSON writes the plain values (clocks) without reflection;
		// json.Marshal takes the rest, and gives its errors.
		if b, ok := encodeJSON(v); ok {
			return b, true, nil
		}
		b, err := json.Marshal(v)
		return b, true, err
	}
	switch x := v.(type) {
	case string:
		return []byte(x), true, nil
	case []byte:
		return x, true, nil
	case bool:
		return strconv.AppendBool(nil, x), true, nil
	case int:
		return strconv.AppendInt(nil, int64(x), 10), true, nil
	case int32:
		return strconv.AppendInt(nil, int64(x), 10), true, nil
	case int64:
		return strconv.AppendInt(nil, x, 10), true, nil
	case uint32:
		return strconv.AppendUint(nil, uint64(x), 10), true, nil
	case uint64:
		return strconv.AppendUint(nil, x, 10), true, nil
	case float32:
		return strconv.AppendFloat(nil, float64(x), 'f', -1, 32), true, nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			if typ == oidFloat4 || typ == oidFloat8 || typ == oidNumeric {
				return []byte(strconv.FormatFloat(x, 'g', -1, 64)), true, nil
			}
			return nil, false, fmt.Errorf("value %v is not a number the column can hold", x)
		}
		return strconv.AppendFloat(nil, x, 'f', -1, 64), true, nil
	case time.Time:
		return []byte(x.UTC().Format("2006-01-02 15:04:05.999999Z07:00")), true, nil
	case json.Number:
		return []byte(x.String()), true, nil
	}
	return nil, false, fmt.Errorf("value of Go type %T cannot be written to a column of type oid %d", v, typ)
}

// sameValue reports whether a script's value v, written to a column of type
// typ, would leave the stored value t (decoded by decodeValue) unchanged.
func sameValue(typ uint32, v, t any) bool {
	if v == nil || t == nil {
		return v == nil && t == nil
	}
	if typ == oidJSON || typ == oidJSONB {
		if eq, ok := jsonEqual(v, t); ok {
			return eq
		}
		return reflect.DeepEqual(normalJSON(v), normalJSON(t))
	}
	vt, ok, err := encodeValue(typ, v)
	if err != nil || !ok {
		return false
	}
	tt, ok, err := encodeValue(typ, t)
	if err != nil || !ok {
		return false
	}
	if typ == oidFloat4 || typ == oidFloat8 {
		a, err1 := strconv.ParseFloat(string(vt), 64)
		b, err2 := strconv.ParseFloat(string(tt), 64)
		return err1 == nil && err2 == nil && a == b
	}
	return bytes.Equal(vt, tt)
}

// jsonEqual compares two JSON values as normalJSON would, without
// encoding them: the sink compares every merged clock with the target's
// while the target row is locked (flush), and two trips through
// encoding/json per value were an eighth of the CPU of a process running
// 16 sinks (and 8 workers) at eight spokes.
// ok is false where it does not decide (values isJSONKind refuses, maps
// with a key that is not valid UTF-8): normalJSON does.
func jsonEqual(a, b any) (eq, ok bool) {
	a, b = jsonShape(a), jsonShape(b)
	if !isJSONKind(a) || !isJSONKind(b) {
		return false, false
	}
	switch x := a.(type) {
	case nil:
		return b == nil, true
	case bool:
		y, same := b.(bool)
		return same && x == y, true
	case string:
		y, same := b.(string)
		return same && x == y, true
	case map[string]any:
		y, same := b.(map[string]any)
		if !same {
			return false, true
		}
		// encoding/json alters invalid keys (which may then collide, or
		// match a valid key): leave maps holding one to it.
		if !validKeys(x) || !validKeys(y) {
			return false, false
		}
		if len(x) != len(y) {
			return false, true
		}
		for k, xv := range x {
			yv, found := y[k]
			if !found {
				return false, true
			}
			if eq, ok := jsonEqual(xv, yv); !ok || !eq {
				return eq, ok
			}
		}
		return true, true
	case []any:
		y, same := b.([]any)
		if !same || len(x) != len(y) {
			return false, true
		}
		for i := range x {
			if eq, ok := jsonEqual(x[i], y[i]); !ok || !eq {
				return eq, ok
			}
		}
		return true, true
	}
	xf, _ := jsonNumber(a)
	yf, same := jsonNumber(b)
	return same && xf == yf, true
}

func validKeys(m map[string]any) bool {
	for k := range m {
		if !utf8.ValidString(k) {
			return false
		}
	}
	return true
}

// jsonShape gives what encoding/json would decode v's encoding to, where
// that is only a change of Go type: a nil map or slice is null, a Row an
// object.
func jsonShape(v any) any {
	switch x := v.(type) {
	case script.Row:
		if x == nil {
			return nil
		}
		return map[string]any(x)
	case map[string]any:
		if x == nil {
			return nil
		}
	case []any:
		if x == nil {
			return nil
		}
	}
	return v
}

// isJSONKind reports whether jsonEqual handles v (after jsonShape): what
// encoding/json decodes to and goja exports, with strings valid UTF-8
// (encoding/json would alter others; map keys are checked as the maps are
// compared) and numbers finite.
func isJSONKind(v any) bool {
	switch x := v.(type) {
	case nil, bool, map[string]any, []any:
		return true
	case string:
		return utf8.ValidString(x)
	}
	_, isNum := jsonNumber(v)
	return isNum
}

// jsonNumber gives the float64 that encoding/json decodes a number's text
// to; isNum is false for anything else, for numbers encoding/json refuses
// (not finite), and for float32, whose text is its own shortest form.
func jsonNumber(v any) (f float64, isNum bool) {
	switch n := v.(type) {
	case float64:
		return n, !math.IsNaN(n) && !math.IsInf(n, 0)
	case int64:
		return float64(n), true // rounds to nearest even, as parsing its text does
	case int:
		return float64(n), true
	case int32:
		return float64(n), true
	}
	return 0, false
}

// normalJSON maps a value to the shape encoding/json decodes it to, so
// values from goja (int64, nested maps) compare equal to decoded jsonb.
func normalJSON(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return v
	}
	return out
}

// rowJSON renders a row for votr.dead_letters.
func rowJSON(r script.Row) []byte {
	if r == nil {
		return nil
	}
	b, err := json.Marshal(map[string]any(r))
	if err != nil {
		b, _ = json.Marshal(map[string]string{"unencodable": fmt.Sprint(r)})
	}
	return b
}

// pgEpoch is PostgreSQL's time origin, 2000-01-01 UTC.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func pgTime(us int64) time.Time { return pgEpoch.Add(time.Duration(us) * time.Microsecond) }
