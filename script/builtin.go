package script

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"time"
)

// builtinMerge is the rule for tables without a merge function: last-one-wins
// on the version column when there is one (a tie or an older proposal keeps
// the target), plain overwrite otherwise. A delete deletes.
func builtinMerge(cfg TableConfig, op Op) (Result, error) {
	switch {
	case op.Proposed == nil && op.Target == nil:
		return Result{Action: Drop}, nil
	case op.Proposed == nil:
		return Result{Action: Delete}, nil
	case op.Target == nil || cfg.VersionColumn == "":
		return Result{Action: Apply, Row: op.Proposed}, nil
	}
	col := cfg.VersionColumn
	pv, ok := op.Proposed[col]
	if !ok {
		return Result{}, fmt.Errorf("the proposed row has no column %q, the table's versionColumn", col)
	}
	tv, ok := op.Target[col]
	if !ok {
		return Result{}, fmt.Errorf("the target row has no column %q, the table's versionColumn", col)
	}
	c, err := compareValues(pv, tv)
	if err != nil {
		return Result{}, fmt.Errorf("comparing versionColumn %q: %w", col, err)
	}
	if c > 0 {
		return Result{Action: Apply, Row: op.Proposed}, nil
	}
	return Result{Action: Drop}, nil
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
			return 0, fmt.Errorf("cannot compare %T with %T", a, b)
		}
		return x.Cmp(y), nil
	}
	switch x := a.(type) {
	case string:
		if y, ok := b.(string); ok {
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

// number reads any Go numeric value exactly, so int64 42, float64 42 and
// json.Number "42" are the same number.
func number(v any) (*big.Float, bool) {
	f := new(big.Float).SetPrec(128)
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

func floatNumber(f *big.Float, x float64) (*big.Float, bool) {
	if math.IsNaN(x) {
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
