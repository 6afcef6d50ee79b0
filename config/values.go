package config

import (
	"errors"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// scalar returns the ${VAR}-expanded text of a key's value, and the text as
// written in the file. Messages quote only the written text: an expanded
// value may hold a secret that the file does not show. want describes the
// expected value for the message when the value is not a scalar.
func (l *loader) scalar(e entry, key, want string) (value, written string, ok bool) {
	v := resolve(e.val)
	switch {
	case v.Kind != yaml.ScalarNode:
		l.errorf(v, "%s must be %s, not %s; give a single value after %s:", key, want, describe(v), key)
		return "", "", false
	case isNull(v):
		l.errorf(v, "%s has no value; give %s, or remove the key to use the default", key, want)
		return "", "", false
	}
	s, problems := expand(v.Value, l.env)
	for _, p := range problems {
		at := *v
		// A plain one-line scalar maps byte offsets to columns exactly.
		if v.Style == 0 && !strings.Contains(v.Value, "\n") {
			at.Column += utf8.RuneCountInString(v.Value[:p.offset])
		}
		l.errorf(&at, "%s: %s", key, p.msg)
	}
	return s, v.Value, len(problems) == 0
}

func (l *loader) integer(e entry, key string, def, lo, hi int, meaning string) int {
	if !e.ok() {
		return def
	}
	want := "an integer (" + meaning + ")"
	s, shown, ok := l.scalar(e, key, want)
	if !ok {
		return def
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	switch {
	case err != nil && errors.Is(err, strconv.ErrRange):
		l.errorf(e.val, "%s is far too large; it must be between %d and %d (%s)", key, lo, hi, meaning)
	case err != nil:
		l.errorf(e.val, "%s must be %s, not %s; e.g. %s: %d", key, want, short(shown), key, max(def, lo))
	case n < int64(lo) || n > int64(hi):
		l.errorf(e.val, "%s is %d; it must be between %d and %d (%s)", key, n, lo, hi, meaning)
	default:
		return int(n)
	}
	return def
}

func (l *loader) duration(e entry, key string, def, lo, hi time.Duration) time.Duration {
	if !e.ok() {
		return def
	}
	s, shown, ok := l.scalar(e, key, "a duration like 30s or 1m")
	if !ok {
		return def
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	switch {
	case err != nil:
		l.errorf(e.val, "%s: %s is not a duration; use a Go duration like 30s or 1m (units ms, s, m, h)", key, short(shown))
	case d < lo || d > hi:
		l.errorf(e.val, "%s is %s; it must be between %s and %s", key, d, lo, hi)
	default:
		return d
	}
	return def
}

var sizeRe = regexp.MustCompile(`^([0-9]+)\s*([A-Za-z]*)$`)

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

func (l *loader) size(e entry, key string, def int64) int64 {
	if !e.ok() {
		return def
	}
	const want = "a size in bytes like 1073741824, or with a unit like 512MiB or 1GiB"
	s, shown, ok := l.scalar(e, key, want)
	if !ok {
		return def
	}
	m := sizeRe.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		l.errorf(e.val, "%s is %s, not a size; write %s", key, short(shown), want)
		return def
	}
	unit, known := sizeUnits[strings.ToLower(m[2])]
	if !known {
		l.errorf(e.val, "%s: unknown unit in %s; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB", key, short(shown))
		return def
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || n > math.MaxInt64/unit {
		l.errorf(e.val, "%s is far too large; e.g. %s: 1GiB", key, key)
		return def
	}
	if n <= 0 {
		l.errorf(e.val, "%s must be more than 0 bytes; e.g. %s: 1GiB", key, key)
		return def
	}
	return n * unit
}

// boolean reads a true/false key; def when it is absent or wrong (then
// reported).
func (l *loader) boolean(e entry, key string, def bool) bool {
	if !e.ok() {
		return def
	}
	s, shown, ok := l.scalar(e, key, "true or false")
	if !ok {
		return def
	}
	switch strings.TrimSpace(s) {
	case "true":
		return true
	case "false":
		return false
	}
	l.errorf(e.val, "%s must be true or false, not %s", key, short(shown))
	return def
}
