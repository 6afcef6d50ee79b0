package sink

import (
	"encoding/json"
	"strconv"
)

// decodeJSON decodes JSON text into what encoding/json's Unmarshal into an
// any gives (objects map[string]any, arrays []any, numbers float64), without
// its reflection and its validating pre-pass. Every merge of a row with a
// json(b) column decodes each image's text (a vector clock, for VOTR's
// tables), and Unmarshal was a sixth of a merge. Only the plain subset is
// decoded here: a string with an escape or a byte beyond ASCII, a deep
// nesting, anything malformed goes to encoding/json, so both agree on every
// input, errors included.
func decodeJSON(text []byte) (any, error) {
	d := jsonText{buf: text}
	v, ok := d.value(0)
	if ok {
		d.space()
		ok = d.pos == len(d.buf)
	}
	if ok {
		return v, nil
	}
	var slow any
	if err := json.Unmarshal(text, &slow); err != nil {
		return nil, err
	}
	return slow, nil
}

// jsonText is decodeJSON's cursor. Its methods report ok = false for
// whatever they leave to encoding/json.
type jsonText struct {
	buf []byte
	pos int
}

// maxJSONDepth bounds the recursion; deeper text goes to encoding/json.
const maxJSONDepth = 64

func (d *jsonText) space() {
	for d.pos < len(d.buf) {
		switch d.buf[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *jsonText) value(depth int) (any, bool) {
	d.space()
	if d.pos >= len(d.buf) || depth > maxJSONDepth {
		return nil, false
	}
	switch c := d.buf[d.pos]; {
	case c == '{':
		return d.object(depth)
	case c == '[':
		return d.array(depth)
	case c == '"':
		s, ok := d.string()
		return s, ok
	case c == '-' || (c >= '0' && c <= '9'):
		return d.number()
	case c == 't':
		return true, d.literal("true")
	case c == 'f':
		return false, d.literal("false")
	case c == 'n':
		return nil, d.literal("null")
	}
	return nil, false
}

func (d *jsonText) literal(word string) bool {
	if len(d.buf)-d.pos < len(word) || string(d.buf[d.pos:d.pos+len(word)]) != word {
		return false
	}
	d.pos += len(word)
	return true
}

// string reads a string without escapes, of printable ASCII only (whose
// bytes are its value).
func (d *jsonText) string() (string, bool) {
	start := d.pos + 1
	for i := start; i < len(d.buf); i++ {
		switch c := d.buf[i]; {
		case c == '"':
			d.pos = i + 1
			return string(d.buf[start:i]), true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return "", false
		}
	}
	return "", false
}

// number reads a number of JSON's grammar, parsed as encoding/json parses
// it (strconv.ParseFloat); one out of float64's range is left to it.
func (d *jsonText) number() (any, bool) {
	b, i := d.buf, d.pos
	digits := func() bool {
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > start
	}
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case !digits():
		return nil, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return nil, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return nil, false
		}
	}
	f, err := strconv.ParseFloat(string(b[d.pos:i]), 64)
	if err != nil {
		return nil, false
	}
	d.pos = i
	return f, true
}

func (d *jsonText) object(depth int) (any, bool) {
	d.pos++ // {
	m := map[string]any{}
	d.space()
	if d.pos < len(d.buf) && d.buf[d.pos] == '}' {
		d.pos++
		return m, true
	}
	for {
		d.space()
		if d.pos >= len(d.buf) || d.buf[d.pos] != '"' {
			return nil, false
		}
		k, ok := d.string()
		if !ok {
			return nil, false
		}
		d.space()
		if d.pos >= len(d.buf) || d.buf[d.pos] != ':' {
			return nil, false
		}
		d.pos++
		v, ok := d.value(depth + 1)
		if !ok {
			return nil, false
		}
		m[k] = v // a repeated key: the last one, as encoding/json
		if more, ok := d.next('}'); !more {
			return m, ok
		}
	}
}

func (d *jsonText) array(depth int) (any, bool) {
	d.pos++ // [
	a := []any{}
	d.space()
	if d.pos < len(d.buf) && d.buf[d.pos] == ']' {
		d.pos++
		return a, true
	}
	for {
		v, ok := d.value(depth + 1)
		if !ok {
			return nil, false
		}
		a = append(a, v)
		if more, ok := d.next(']'); !more {
			return a, ok
		}
	}
}

// next reads what follows a member of an object or array: a comma (more
// members) or its closing byte (ok, the end), or else nothing it takes.
func (d *jsonText) next(closing byte) (more, ok bool) {
	d.space()
	if d.pos >= len(d.buf) {
		return false, false
	}
	switch d.buf[d.pos] {
	case ',':
		d.pos++
		return true, true
	case closing:
		d.pos++
		return false, true
	}
	return false, false
}
