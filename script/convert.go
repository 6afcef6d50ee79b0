package script

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dop251/goja"
)

// maxSafeInt is the largest integer a JavaScript number holds exactly
// (Number.MAX_SAFE_INTEGER). Integers beyond it reach the script as decimal
// strings rather than silently losing their low digits.
const maxSafeInt = 1<<53 - 1

// valuePath names where a value sits in a merge's argument or result
// ("proposed.whence.1", "apply.tags[2]") for error messages. Conversions
// run for every merge, on the sink's hot path: the Host keeps one path and
// the walk pushes and pops its steps, so that no string is built unless an
// error is reported (a string per value was a tenth of their cost).
type valuePath struct{ steps []pathStep }

type pathStep struct {
	key   string // a property's name, unless elem
	elem  bool   // an array element, at index
	index int
}

// at starts the path at a root (before, apply, ...) and returns it.
func (p *valuePath) at(root string) *valuePath {
	p.steps = append(p.steps[:0], pathStep{key: root})
	return p
}

func (p *valuePath) push(key string) { p.steps = append(p.steps, pathStep{key: key}) }

func (p *valuePath) pushIndex(i int) { p.steps = append(p.steps, pathStep{elem: true, index: i}) }

func (p *valuePath) pop() { p.steps = p.steps[:len(p.steps)-1] }

func (p *valuePath) String() string {
	var b strings.Builder
	for i, s := range p.steps {
		switch {
		case s.elem:
			fmt.Fprintf(&b, "[%d]", s.index)
		case i > 0:
			b.WriteString("." + s.key)
		default:
			b.WriteString(s.key)
		}
	}
	return b.String()
}

// opValue builds the JavaScript argument of a merge:
// {before, proposed, target, deleted, meta}. Its properties are converted
// when the script first reads them (opObject).
func (h *Host) opValue(tableName string, op Op) goja.Value {
	if op.Meta.Table == "" {
		op.Meta.Table = tableName
	}
	h.convErr = nil
	return h.vm.NewDynamicObject(&opObject{h: h, op: op, present: allOpFields})
}

// opFields names the properties of a merge's argument, in their order.
var opFields = [...]string{"before", "proposed", "target", "deleted", "meta"}

const allOpFields = 1<<len(opFields) - 1

// opObject is a merge's argument as the script sees it. Each property is
// converted to JavaScript when the script first reads it: a merge of an
// update seldom reads the before-image, and converting every row up front
// was a third of a totals merge. It behaves as a plain object whose
// properties the script may read, set, add and delete, except that it
// cannot be frozen or given accessors. It keeps its Op, so one that a
// script kept past its call still reads its own rows.
type opObject struct {
	h       *Host
	op      Op
	present uint8 // bit i: opFields[i] is a property
	done    uint8 // bit i: vals[i] holds its value
	vals    [len(opFields)]goja.Value
	// extra holds properties the script added, names their order.
	extra map[string]goja.Value
	names []string
}

func opField(key string) int {
	for i, f := range opFields {
		if f == key {
			return i
		}
	}
	return -1
}

// Get converts the field on its first read. A value that cannot be
// converted throws in the script (or, read by the conversion of a result,
// is undefined), and the Host keeps the error: the merge fails with it,
// whatever became of the exception.
func (o *opObject) Get(key string) goja.Value {
	i := opField(key)
	if i < 0 {
		return o.extra[key]
	}
	if o.present&(1<<i) == 0 {
		return nil
	}
	if o.done&(1<<i) == 0 {
		v, err := o.h.opFieldValue(o.op, i)
		if err != nil {
			if o.h.convErr == nil {
				o.h.convErr = err
			}
			if !o.h.calling {
				return goja.Undefined()
			}
			panic(o.h.vm.NewTypeError(err.Error()))
		}
		o.vals[i], o.done = v, o.done|1<<i
	}
	return o.vals[i]
}

func (o *opObject) Set(key string, val goja.Value) bool {
	if i := opField(key); i >= 0 {
		o.vals[i], o.present, o.done = val, o.present|1<<i, o.done|1<<i
		return true
	}
	if _, ok := o.extra[key]; !ok {
		if o.extra == nil {
			o.extra = map[string]goja.Value{}
		}
		o.names = append(o.names, key)
	}
	o.extra[key] = val
	return true
}

func (o *opObject) Has(key string) bool {
	if i := opField(key); i >= 0 {
		return o.present&(1<<i) != 0
	}
	_, ok := o.extra[key]
	return ok
}

func (o *opObject) Delete(key string) bool {
	if i := opField(key); i >= 0 {
		o.present &^= 1 << i
		o.done &^= 1 << i
		o.vals[i] = nil
		return true
	}
	if _, ok := o.extra[key]; ok {
		delete(o.extra, key)
		o.names = slices.DeleteFunc(o.names, func(n string) bool { return n == key })
	}
	return true
}

func (o *opObject) Keys() []string {
	keys := make([]string, 0, len(opFields)+len(o.names))
	for i, f := range opFields {
		if o.present&(1<<i) != 0 {
			keys = append(keys, f)
		}
	}
	return append(keys, o.names...)
}

// opFieldValue converts field i (opFields) of op. It has a path of its
// own: the conversion of a result may read a field of the argument.
func (h *Host) opFieldValue(op Op, i int) (goja.Value, error) {
	if rows := [...]Row{op.Before, op.Proposed, op.Target, op.Deleted}; i < len(rows) {
		return h.rowValue(rows[i], h.fieldPath.at(opFields[i]))
	}
	return h.metaValue(op.Meta)
}

func (h *Host) metaValue(m Meta) (goja.Value, error) {
	meta := h.vm.NewObject()
	var commit goja.Value = goja.Null()
	if !m.CommitTime.IsZero() {
		commit = h.vm.ToValue(m.CommitTime.UTC().Format(time.RFC3339Nano))
	}
	for _, kv := range []struct {
		k string
		v goja.Value
	}{
		{"source", h.vm.ToValue(m.Source)},
		{"target", h.vm.ToValue(m.Target)},
		{"table", h.vm.ToValue(m.Table)},
		{"lsn", h.vm.ToValue(m.LSN)},
		{"commitTime", commit},
	} {
		if err := meta.Set(kv.k, kv.v); err != nil {
			return nil, err
		}
	}
	return meta, nil
}

// rowValue converts a row (nil → null). Columns are added in sorted order so
// a script that iterates over a row sees the same order on every call and in
// every region.
func (h *Host) rowValue(r Row, path *valuePath) (goja.Value, error) {
	if r == nil {
		return goja.Null(), nil
	}
	return h.objectValue(r, path)
}

func (h *Host) objectValue(m map[string]any, path *valuePath) (goja.Value, error) {
	var buf [16]string // rows and clocks are small: keep the keys off the heap
	keys := buf[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	o := h.vm.NewObject()
	for _, k := range keys {
		path.push(k)
		v, err := h.toJS(m[k], path)
		if err != nil {
			return nil, err
		}
		path.pop()
		if err := o.Set(k, v); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// toJS converts a Go value of a Row to a plain JavaScript value (never a
// wrapped Go object, whose behaviour differs from ECMAScript objects).
func (h *Host) toJS(v any, path *valuePath) (goja.Value, error) {
	switch x := v.(type) {
	case nil:
		return goja.Null(), nil
	case string:
		return h.vm.ToValue(x), nil
	case bool:
		return h.vm.ToValue(x), nil
	case int64:
		return h.intValue(x), nil
	case int:
		return h.intValue(int64(x)), nil
	case int32:
		return h.intValue(int64(x)), nil
	case int16:
		return h.intValue(int64(x)), nil
	case int8:
		return h.intValue(int64(x)), nil
	case uint8:
		return h.intValue(int64(x)), nil
	case uint16:
		return h.intValue(int64(x)), nil
	case uint32:
		return h.intValue(int64(x)), nil
	case uint64:
		if x > maxSafeInt {
			return h.vm.ToValue(strconv.FormatUint(x, 10)), nil
		}
		return h.intValue(int64(x)), nil
	case float64:
		return h.vm.ToValue(x), nil
	case float32:
		return h.vm.ToValue(float64(x)), nil
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return h.intValue(n), nil
		}
		f, err := x.Float64()
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a number", path, x)
		}
		return h.vm.ToValue(f), nil
	case time.Time:
		return h.vm.ToValue(x.Format(time.RFC3339Nano)), nil
	case [16]byte:
		return h.vm.ToValue(fmt.Sprintf("%x-%x-%x-%x-%x", x[0:4], x[4:6], x[6:8], x[8:10], x[10:16])), nil
	case Row:
		return h.objectValue(x, path)
	case map[string]any:
		return h.objectValue(x, path)
	case []any:
		items := make([]any, len(x))
		for i, e := range x {
			path.pushIndex(i)
			ev, err := h.toJS(e, path)
			if err != nil {
				return nil, err
			}
			path.pop()
			items[i] = ev
		}
		return h.vm.NewArray(items...), nil
	case encoding.TextMarshaler:
		b, err := x.MarshalText()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return h.vm.ToValue(string(b)), nil
	}
	return nil, fmt.Errorf("%s: values of Go type %T cannot be passed to a script (give it as a string, number, bool, nil, map[string]any or []any)", path, v)
}

func (h *Host) intValue(n int64) goja.Value {
	if n > maxSafeInt || n < -maxSafeInt {
		return h.vm.ToValue(strconv.FormatInt(n, 10))
	}
	return h.vm.ToValue(n)
}

const resultShapes = "return exactly one of {apply: row}, {drop: true}, {deadLetter: \"reason\"}, {delete: true} (the first, second and last optionally with tombstone: row)"

// result checks and converts what a merge returned.
func (h *Host) result(op Op, v goja.Value) (Result, error) {
	obj, ok := v.(*goja.Object)
	if !ok || goja.IsNull(v) || isArray(obj) || isFunction(obj) {
		return Result{}, fmt.Errorf("got %s; %s", typeOf(v), resultShapes)
	}
	var keys []string
	var tomb Row
	for _, k := range obj.Keys() {
		switch k {
		case "apply", "drop", "deadLetter", "delete":
			keys = append(keys, k)
		case "tombstone":
			row, err := resultRow(op, obj.Get(k), h.valuePath.at(k), "a complete row, the image of what was deleted", "tombstone: %w")
			if err != nil {
				return Result{}, err
			}
			tomb = row
		default:
			return Result{}, fmt.Errorf("unknown key %q; %s", k, resultShapes)
		}
	}
	if len(keys) != 1 {
		if len(keys) == 0 {
			return Result{}, fmt.Errorf("got an empty object; %s", resultShapes)
		}
		return Result{}, fmt.Errorf("got keys %s together; %s", strings.Join(keys, ", "), resultShapes)
	}
	res, err := h.action(op, obj, keys[0])
	if err != nil {
		return Result{}, err
	}
	if tomb != nil {
		if res.Action == DeadLetter {
			return Result{}, errors.New("deadLetter cannot come with a tombstone: a parked change changes nothing")
		}
		res.Tombstone = tomb
	}
	return res, nil
}

// action converts the one action key of a merge's result.
func (h *Host) action(op Op, obj *goja.Object, key string) (Result, error) {
	val := obj.Get(key)
	switch key {
	case "drop", "delete":
		if b, ok := val.Export().(bool); !ok || !b || goja.IsNull(val) {
			return Result{}, fmt.Errorf("%s is %s; it must be true", key, typeOf(val))
		}
		if key == "drop" {
			return Result{Action: Drop}, nil
		}
		return Result{Action: Delete}, nil
	case "deadLetter":
		s, ok := val.Export().(string)
		if !ok || goja.IsNull(val) || strings.TrimSpace(s) == "" {
			return Result{}, fmt.Errorf("deadLetter is %s; it must be a non-empty string saying why the change is parked", typeOf(val))
		}
		return Result{Action: DeadLetter, Reason: s}, nil
	}
	row, err := resultRow(op, val, h.valuePath.at("apply"), "the row to write, e.g. {apply: {...op.target, total: 3}}", "%w")
	if err != nil {
		return Result{}, err
	}
	return Result{Action: Apply, Row: row}, nil
}

// resultRow converts val, the row a merge's result gives at path (apply,
// tombstone): a plain object (else the error says it must be want) whose
// columns are the table's (else the columns' error, formatted by
// columnsFormat).
func resultRow(op Op, val goja.Value, path *valuePath, want, columnsFormat string) (Row, error) {
	o, ok := val.(*goja.Object)
	if !ok || goja.IsNull(val) || isArray(o) || isFunction(o) {
		return nil, fmt.Errorf("%s is %s; it must be %s", path, typeOf(val), want)
	}
	row, err := fromJSObject(o, path)
	if err != nil {
		return nil, err
	}
	if err := checkColumns(op, Row(row)); err != nil {
		return nil, fmt.Errorf(columnsFormat, err)
	}
	return Row(row), nil
}

// checkColumns requires an applied row to have exactly the table's columns,
// as known from the rows of the operation, so a typo in a column name or a
// forgotten column is caught here rather than as a half-written row.
func checkColumns(op Op, row Row) error {
	if sameColumns(op, row) {
		return nil
	}
	known := map[string]bool{}
	for _, r := range []Row{op.Before, op.Proposed, op.Target, op.Deleted} {
		for k := range r {
			known[k] = true
		}
	}
	if len(known) == 0 {
		return nil
	}
	var unknown, missing []string
	for k := range row {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	for k := range known {
		if _, ok := row[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(unknown) == 0 && len(missing) == 0 {
		return nil
	}
	cols := make([]string, 0, len(known))
	for k := range known {
		cols = append(cols, k)
	}
	sort.Strings(cols)
	sort.Strings(unknown)
	sort.Strings(missing)
	var parts []string
	if len(unknown) > 0 {
		parts = append(parts, "apply has "+strings.Join(unknown, ", ")+" which the table does not have")
	}
	if len(missing) > 0 {
		parts = append(parts, "apply lacks "+strings.Join(missing, ", "))
	}
	return fmt.Errorf("%s (the table's columns are %s; return a complete row, e.g. {...op.target, col: value})", strings.Join(parts, " and "), strings.Join(cols, ", "))
}

// sameColumns reports, without building the set of known columns, the
// usual case: every row of the operation has exactly row's columns.
func sameColumns(op Op, row Row) bool {
	seen := false
	for _, r := range []Row{op.Before, op.Proposed, op.Target, op.Deleted} {
		if r == nil {
			continue
		}
		if len(r) != len(row) {
			return false
		}
		for k := range r {
			if _, ok := row[k]; !ok {
				return false
			}
		}
		seen = true
	}
	return seen
}

// fromJS converts a script's value back to Go: integral numbers → int64,
// other numbers → float64, objects → map[string]any, arrays → []any,
// Dates → time.Time, BigInts that fit → int64. undefined, functions and
// symbols are errors naming where they were found.
func fromJS(v goja.Value, path *valuePath) (any, error) {
	if v == nil || goja.IsUndefined(v) {
		return nil, fmt.Errorf("%s is undefined (use null for SQL NULL)", path)
	}
	if goja.IsNull(v) {
		return nil, nil
	}
	if o, ok := v.(*goja.Object); ok {
		return fromJSObjectValue(o, path)
	}
	if _, ok := v.(*goja.Symbol); ok {
		return nil, fmt.Errorf("%s is a symbol, which cannot be stored", path)
	}
	switch x := v.Export().(type) {
	case string, bool:
		return x, nil
	case int64:
		return x, nil
	case float64:
		if x == math.Trunc(x) && x >= -(1<<63) && x < 1<<63 {
			return int64(x), nil
		}
		return x, nil
	case *big.Int:
		if x.IsInt64() {
			return x.Int64(), nil
		}
		return nil, fmt.Errorf("%s: BigInt %s does not fit in 64 bits", path, x)
	}
	return nil, fmt.Errorf("%s is %s, which cannot be stored", path, typeOf(v))
}

func fromJSObjectValue(o *goja.Object, path *valuePath) (any, error) {
	switch {
	case isFunction(o):
		return nil, fmt.Errorf("%s is a function, which cannot be stored", path)
	case isArray(o):
		n := o.Get("length").ToInteger()
		out := make([]any, n)
		for i := int64(0); i < n; i++ {
			path.pushIndex(int(i))
			e, err := fromJS(o.Get(strconv.FormatInt(i, 10)), path)
			if err != nil {
				return nil, err
			}
			path.pop()
			out[i] = e
		}
		return out, nil
	case o.ClassName() == "Date":
		if t, ok := o.Export().(time.Time); ok {
			return t, nil
		}
		return nil, fmt.Errorf("%s is an invalid Date", path)
	}
	m, err := fromJSObject(o, path)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func fromJSObject(o *goja.Object, path *valuePath) (map[string]any, error) {
	keys := o.Keys()
	m := make(map[string]any, len(keys))
	for _, k := range keys {
		path.push(k)
		v, err := fromJS(o.Get(k), path)
		if err != nil {
			return nil, err
		}
		path.pop()
		m[k] = v
	}
	return m, nil
}
