package script

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"sort"
	"strings"
	"time"
)

// BuiltinMerge is the rule for tables without a merge function (exported
// so a sink without a script applies the same rule).
//
// Without a version column: plain overwrite. A proposal is applied (also
// over a tombstone), a delete deletes, and a delete of an absent row is
// dropped.
//
// With a version column: last-one-wins, as a join. Writes are ordered by
// the version column (compared exactly), then by the whole row's content,
// so equal versions with different contents still pick the same winner in
// every region. A delete is the tombstone of the image it deleted (its
// before-image, else the target row): it hides every write that does not
// order after that image. The key's state is the greatest write and the
// greatest tombstone, and the row exists while the write orders after the
// tombstone, so any order of arrival gives the same rows.
func BuiltinMerge(cfg TableConfig, op Op) (Result, error) {
	if cfg.VersionColumn == "" {
		switch {
		case op.Proposed != nil:
			return Result{Action: Apply, Row: op.Proposed}, nil
		case op.Target != nil:
			return Result{Action: Delete}, nil
		}
		return Result{Action: Drop}, nil
	}
	col := cfg.VersionColumn
	for _, side := range []struct {
		name string
		row  Row
	}{{"proposed", op.Proposed}, {"target", op.Target}, {"deleted", op.Deleted}} {
		if side.row == nil {
			continue
		}
		if _, ok := side.row[col]; !ok {
			return Result{}, fmt.Errorf("the %s row has no column %q, the table's versionColumn", side.name, col)
		}
	}
	if op.Proposed != nil {
		other := op.Target
		if other == nil {
			other = op.Deleted
		}
		if other == nil {
			return Result{Action: Apply, Row: op.Proposed}, nil
		}
		c, err := compareWrites(col, op.Proposed, other)
		if err != nil {
			return Result{}, err
		}
		if c > 0 {
			return Result{Action: Apply, Row: op.Proposed}, nil
		}
		return Result{Action: Drop}, nil
	}
	// A delete. Its image is the row it deleted at its source; without
	// REPLICA IDENTITY FULL the sink gives no before-image, and the delete
	// takes the target row as what it saw.
	seen := op.Before
	if seen == nil {
		seen = op.Target
	}
	if seen == nil {
		return Result{Action: Drop}, nil
	}
	if _, ok := seen[col]; !ok {
		return Result{}, fmt.Errorf("the before row has no column %q, the table's versionColumn", col)
	}
	tomb := seen
	if op.Deleted != nil {
		c, err := compareWrites(col, op.Deleted, seen)
		if err != nil {
			return Result{}, err
		}
		if c > 0 {
			tomb = op.Deleted
		}
	}
	if op.Target != nil {
		c, err := compareWrites(col, op.Target, tomb)
		if err != nil {
			return Result{}, err
		}
		if c <= 0 {
			return Result{Action: Delete, Tombstone: tomb}, nil
		}
	}
	// The row (if any) is newer than everything deleted: it stays, and the
	// tombstone keeps the newest deleted image for later arrivals.
	if op.Deleted != nil && RowsEqual(tomb, op.Deleted) {
		return Result{Action: Drop}, nil
	}
	return Result{Action: Drop, Tombstone: tomb}, nil
}

// compareWrites orders two writes of one row for last-one-wins: by the
// version column, then by content (columns in name order, each by
// compareValues, or by canonical JSON where kinds differ). 0 only for rows
// with the same contents.
func compareWrites(col string, a, b Row) (int, error) {
	c, err := compareValues(a[col], b[col])
	if err != nil {
		return 0, fmt.Errorf("comparing versionColumn %q: %w", col, err)
	}
	if c != 0 {
		return c, nil
	}
	return compareContents(a, b), nil
}

// compareContents is a total order on rows that every region computes the
// same way from the same values.
func compareContents(a, b Row) int {
	names := make([]string, 0, len(a)+len(b))
	for k := range a {
		names = append(names, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		av, aok := a[k]
		bv, bok := b[k]
		switch {
		case !aok && !bok:
			continue
		case !aok:
			return -1
		case !bok:
			return 1
		}
		if valuesEqual(av, bv) {
			continue
		}
		c, err := compareValues(av, bv)
		if err != nil || c == 0 {
			c = strings.Compare(canonicalJSON(av), canonicalJSON(bv))
		}
		if c != 0 {
			return c
		}
	}
	return 0
}

// canonicalJSON renders a value with sorted object keys (encoding/json
// sorts map keys), for comparing values of different kinds.
func canonicalJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%T:%v", v, v)
	}
	return string(b)
}

// compareValues orders two column values: NULL first, then numbers by value
// (whatever their Go type), strings, booleans and times in their natural
// order. Values of different kinds cannot be compared.
func compareValues(a, b any) (int, error) {
	if a == nil || b == nil {
		switch {
		case a == nil && b == nil:
			return 0, nil
		case a == nil:
			return -1, nil
		}
		return 1, nil
	}
	if x, ok := number(a); ok {
		y, ok := number(b)
		if !ok {
			if s, isStr := b.(string); isStr {
				if y, ok = decimal(s); ok {
					return x.Cmp(y), nil
				}
			}
			return 0, fmt.Errorf("cannot compare %T with %T", a, b)
		}
		return x.Cmp(y), nil
	}
	if _, ok := number(b); ok {
		if _, isStr := a.(string); isStr {
			c, err := compareValues(b, a)
			return -c, err
		}
	}
	switch x := a.(type) {
	case string:
		if y, ok := b.(string); ok {
			// numeric columns (and integers beyond 2^53 from a script)
			// arrive as decimal strings: compare them as numbers.
			if xn, ok := decimal(x); ok {
				if yn, ok := decimal(y); ok {
					return xn.Cmp(yn), nil
				}
			}
			switch {
			case x < y:
				return -1, nil
			case x > y:
				return 1, nil
			}
			return 0, nil
		}
	case bool:
		if y, ok := b.(bool); ok {
			switch {
			case x == y:
				return 0, nil
			case !x:
				return -1, nil
			}
			return 1, nil
		}
	case time.Time:
		if y, ok := b.(time.Time); ok {
			return x.Compare(y), nil
		}
	}
	return 0, fmt.Errorf("cannot compare %T with %T", a, b)
}

// decimal reads a string holding a plain decimal number (as numeric
// columns give them), exactly.
func decimal(s string) (*big.Rat, bool) {
	if s == "" || len(s) > 1000 {
		return nil, false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && c != '.' && c != '-' && c != '+' {
			return nil, false
		}
	}
	return new(big.Rat).SetString(s)
}

// number reads any Go numeric value exactly, so int64 42, float64 42 and
// json.Number "42" are the same number, and int64s beyond 2^53 keep every
// digit.
func number(v any) (*big.Rat, bool) {
	f := new(big.Rat)
	switch x := v.(type) {
	case int:
		return f.SetInt64(int64(x)), true
	case int8:
		return f.SetInt64(int64(x)), true
	case int16:
		return f.SetInt64(int64(x)), true
	case int32:
		return f.SetInt64(int64(x)), true
	case int64:
		return f.SetInt64(x), true
	case uint8:
		return f.SetUint64(uint64(x)), true
	case uint16:
		return f.SetUint64(uint64(x)), true
	case uint32:
		return f.SetUint64(uint64(x)), true
	case uint64:
		return f.SetUint64(x), true
	case float32:
		return floatNumber(f, float64(x))
	case float64:
		return floatNumber(f, x)
	case json.Number:
		if _, ok := f.SetString(string(x)); ok {
			return f, true
		}
	}
	return nil, false
}

func floatNumber(f *big.Rat, x float64) (*big.Rat, bool) {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil, false
	}
	return f.SetFloat64(x), true
}

// RowsEqual reports whether two rows hold the same values: the same columns,
// numbers equal by value whatever their Go type (a merge returns int64 where
// the database gave float64 or json.Number), nested maps and slices equal
// element by element, times equal as instants. A sink uses it to see that a
// merge result is the target row unchanged, so it writes nothing.
func RowsEqual(a, b Row) bool {
	if (a == nil) != (b == nil) || len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv, ok := b[k]
		if !ok || !valuesEqual(av, bv) {
			return false
		}
	}
	return true
}

func valuesEqual(a, b any) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	if eq, ok := quickNumbersEqual(a, b); ok {
		return eq
	}
	if x, ok := number(a); ok {
		y, ok := number(b)
		return ok && x.Cmp(y) == 0
	}
	switch x := a.(type) {
	case string:
		y, ok := b.(string)
		return ok && x == y
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case time.Time:
		y, ok := b.(time.Time)
		return ok && x.Equal(y)
	case Row:
		return mapsEqual(x, b)
	case map[string]any:
		return mapsEqual(x, b)
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !valuesEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	return false
}

func mapsEqual(x map[string]any, b any) bool {
	var y map[string]any
	switch m := b.(type) {
	case Row:
		y = m
	case map[string]any:
		y = m
	default:
		return false
	}
	return RowsEqual(x, y)
}

// quickNumbersEqual compares the common int64/float64 pairs without
// allocating; ok is false when it cannot decide.
func quickNumbersEqual(a, b any) (eq, ok bool) {
	switch x := a.(type) {
	case int64:
		switch y := b.(type) {
		case int64:
			return x == y, true
		case float64:
			if x > -maxSafeInt && x < maxSafeInt {
				return float64(x) == y, true
			}
		}
	case float64:
		switch y := b.(type) {
		case float64:
			return x == y, true
		case int64:
			if y > -maxSafeInt && y < maxSafeInt {
				return x == float64(y), true
			}
		}
	}
	return false, false
}
