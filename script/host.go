package script

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/dop251/goja"
)

// maxCallStack bounds JavaScript recursion, so a runaway recursive merge fails
// at once instead of growing the stack (and memory) until the deadline.
const maxCallStack = 4096

// ErrTimeout is wrapped by the error of a call that ran past its deadline.
var ErrTimeout = errors.New("script deadline exceeded")

// Host is one sandboxed JavaScript runtime with a script loaded in it. It is
// not safe for concurrent use: goja runtimes are single-threaded, so every
// sink (or applier goroutine) owns its own Host.
type Host struct {
	vm      *goja.Runtime
	path    string
	timeout time.Duration
	log     *slog.Logger
	tables  map[string]*table
	names   []string // sorted
	// valuePath is where the conversion of a merge's argument or result
	// is (convert.go); one per Host, as a Host runs one call at a time.
	valuePath valuePath
	fieldPath valuePath
	// calling is true while the script runs.
	calling bool
	// deadline interrupts the call running past the timeout. One timer
	// serves every call (a timer per call was a tenth of a small merge's
	// cost); fired receives once each time its function has run.
	deadline *time.Timer
	fired    chan struct{}
	// convErr is the first value of the running merge's argument that
	// could not be converted (opObject.Get), if any.
	convErr error
}

// table is one entry of the script's exported tables, with its merge
// function resolved once so calls do not look it up again.
type table struct {
	cfg   TableConfig
	merge goja.Callable
}

// Option tunes a Host.
type Option func(*Host)

// WithLogger sends the script's console.log/info/warn/error/debug output to l
// (attribute "script" names the file). Without it, console output is
// discarded.
func WithLogger(l *slog.Logger) Option {
	return func(h *Host) {
		if l != nil {
			h.log = l
		}
	}
}

// NewHost evaluates the compiled script p in a fresh sandbox and reads the
// tables it configures. The sandbox has the ECMAScript built-ins and a
// console, and nothing else: no require, no file system, network, timers or
// process. timeout bounds every call into the script, module evaluation
// included. It has no default here: the sink's options (sink.DefaultOptions)
// own the merge deadline.
//
// The script must be a module exporting `tables`, an object whose keys are
// table names and whose values are {merge?: function, versionColumn?: string}.
func NewHost(p *Program, timeout time.Duration, opts ...Option) (*Host, error) {
	if p == nil {
		return nil, errors.New("script: no program (compile the script first)")
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("script %s: timeout %s: a deadline cannot be zero or negative; give a positive one for each call into the script", p.Path, timeout)
	}
	h := &Host{
		vm:      goja.New(),
		path:    p.Path,
		timeout: timeout,
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		fired:   make(chan struct{}, 1),
	}
	h.deadline = time.AfterFunc(time.Hour, func() {
		h.vm.Interrupt(ErrTimeout)
		h.fired <- struct{}{}
	})
	h.deadline.Stop()
	for _, o := range opts {
		o(h)
	}
	h.vm.SetMaxCallStackSize(maxCallStack)
	if err := h.installConsole(); err != nil {
		return nil, fmt.Errorf("script %s: %w", p.Path, err)
	}
	exports, err := h.evaluate(p)
	if err != nil {
		return nil, err
	}
	if err := h.readTables(exports); err != nil {
		return nil, fmt.Errorf("script %s: %w", p.Path, err)
	}
	return h, nil
}

// installConsole gives scripts a console whose output goes to the Host's
// logger, so debugging prints neither fail nor reach stdout.
func (h *Host) installConsole() error {
	console := h.vm.NewObject()
	levels := map[string]slog.Level{
		"log": slog.LevelInfo, "info": slog.LevelInfo, "debug": slog.LevelDebug,
		"warn": slog.LevelWarn, "error": slog.LevelError,
	}
	for name, level := range levels {
		fn := func(call goja.FunctionCall) goja.Value {
			parts := make([]string, len(call.Arguments))
			for i, a := range call.Arguments {
				parts[i] = a.String()
			}
			// No context reaches a console call from the script.
			h.log.Log(context.Background(), level, strings.Join(parts, " "), "script", h.path)
			return goja.Undefined()
		}
		if err := console.Set(name, fn); err != nil {
			return fmt.Errorf("installing console.%s: %w", name, err)
		}
	}
	return h.vm.Set("console", console)
}

// evaluate runs the CommonJS module and returns its module.exports.
func (h *Host) evaluate(p *Program) (*goja.Object, error) {
	prg, err := goja.Compile(p.Path, p.JS, false)
	if err != nil {
		return nil, fmt.Errorf("script %s: the compiled JavaScript does not parse (an esbuild/goja mismatch): %w", p.Path, err)
	}
	module := h.vm.NewObject()
	exports := h.vm.NewObject()
	if err := module.Set("exports", exports); err != nil {
		return nil, fmt.Errorf("script %s: %w", p.Path, err)
	}
	if err := h.vm.Set("module", module); err != nil {
		return nil, fmt.Errorf("script %s: %w", p.Path, err)
	}
	if err := h.vm.Set("exports", exports); err != nil {
		return nil, fmt.Errorf("script %s: %w", p.Path, err)
	}
	if _, err := h.guard(func() (goja.Value, error) { return h.vm.RunProgram(prg) }); err != nil {
		err = h.describe("evaluating the script", err)
		if strings.Contains(err.Error(), "require is not defined") {
			return nil, fmt.Errorf("script %s: %w (scripts cannot import modules: keep everything in one file; type-only imports such as `import type { Tables } from \"votr\"` are fine)", p.Path, err)
		}
		return nil, fmt.Errorf("script %s: %w", p.Path, err)
	}
	ev := module.Get("exports")
	if ev == nil || goja.IsUndefined(ev) || goja.IsNull(ev) {
		return nil, fmt.Errorf("script %s: module.exports is %v; the script must be a module that exports `tables`", p.Path, ev)
	}
	obj, ok := ev.(*goja.Object)
	if !ok {
		return nil, fmt.Errorf("script %s: module.exports is %s; the script must be a module that exports `tables`", p.Path, typeOf(ev))
	}
	return obj, nil
}

const shapeHint = "export it as `export const tables: Tables = { ballots: { merge(op) { ... } }, candidates: { versionColumn: \"version\" } }`"

// readTables validates the exported configuration and caches each table's
// merge function.
func (h *Host) readTables(exports *goja.Object) error {
	tv := exports.Get("tables")
	if tv == nil || goja.IsUndefined(tv) {
		if d := exports.Get("default"); d != nil && !goja.IsUndefined(d) {
			return fmt.Errorf("the script has a default export but no `tables` export; %s", shapeHint)
		}
		return fmt.Errorf("the script does not export `tables`; %s", shapeHint)
	}
	tobj, ok := tv.(*goja.Object)
	if !ok || goja.IsNull(tv) || isArray(tobj) || isFunction(tobj) {
		return fmt.Errorf("exported `tables` is %s, not an object mapping table names to their configuration; %s", typeOf(tv), shapeHint)
	}
	h.tables = map[string]*table{}
	for _, name := range tobj.Keys() {
		if name == "" {
			return errors.New("`tables` has an entry with an empty table name")
		}
		t, err := h.readTable(name, tobj.Get(name))
		if err != nil {
			return err
		}
		h.tables[name] = t
		h.names = append(h.names, name)
	}
	sort.Strings(h.names)
	return nil
}

func (h *Host) readTable(name string, v goja.Value) (*table, error) {
	obj, ok := v.(*goja.Object)
	if !ok || goja.IsNull(v) || isArray(obj) || isFunction(obj) {
		return nil, fmt.Errorf("tables.%s is %s; it must be an object such as { merge(op) { ... } } or { versionColumn: \"version\" }", name, typeOf(v))
	}
	t := &table{}
	for _, key := range obj.Keys() {
		pv := obj.Get(key)
		switch key {
		case "merge":
			if goja.IsUndefined(pv) {
				continue
			}
			fn, ok := goja.AssertFunction(pv)
			if !ok {
				return nil, fmt.Errorf("tables.%s.merge is %s; it must be a function (op) => result", name, typeOf(pv))
			}
			t.merge = fn
			t.cfg.HasMerge = true
		case "versionColumn":
			if goja.IsUndefined(pv) {
				continue
			}
			s, ok := pv.Export().(string)
			if !ok || s == "" {
				return nil, fmt.Errorf("tables.%s.versionColumn is %s; it must be a non-empty column name string", name, typeOf(pv))
			}
			t.cfg.VersionColumn = s
		default:
			return nil, fmt.Errorf("tables.%s has unknown property %q; a table takes only merge and versionColumn", name, key)
		}
	}
	return t, nil
}

// Tables returns the names of the tables the script configures, sorted.
func (h *Host) Tables() []string { return append([]string(nil), h.names...) }

// Table returns how the script configures table name. A table the script
// does not mention has the zero TableConfig (plain overwrite).
func (h *Host) Table(name string) TableConfig {
	if t, ok := h.tables[name]; ok {
		return t.cfg
	}
	return TableConfig{}
}

// Merge resolves one conflicting change to table. When the script gives the
// table a merge function, it is called with op under the Host's deadline;
// its result is checked strictly. Otherwise the built-in rule applies
// (BuiltinMerge): last-one-wins on the table's versionColumn when it has one
// (ties broken by content), else plain overwrite (apply the proposed row,
// or delete).
//
// Values cross over as plain JavaScript values: strings, booleans, null,
// numbers (integers beyond ±(2^53−1) as decimal strings, so no digit is
// lost), objects with their keys in sorted order (so iteration is the same in
// every region), arrays; time.Time as an RFC 3339 string. Meta.CommitTime is
// an RFC 3339 string or null. Back in Go, integral numbers are int64, others
// float64, objects map[string]any, arrays []any, Dates time.Time, BigInts
// int64. An applied row must have exactly the columns seen in the op's rows.
// The argument's fields are converted when the script first reads them
// (opObject): it acts as a plain object, but cannot be frozen.
//
// Errors: the merge threw (message and script position), ran past the
// deadline (wraps ErrTimeout), or returned a malformed result. The Host stays
// usable after any of them.
func (h *Host) Merge(tableName string, op Op) (Result, error) {
	t := h.tables[tableName]
	if t == nil || t.merge == nil {
		var cfg TableConfig
		if t != nil {
			cfg = t.cfg
		}
		res, err := BuiltinMerge(cfg, op)
		if err != nil {
			return Result{}, fmt.Errorf("merge for table %s: %w", tableName, err)
		}
		return res, nil
	}
	arg := h.opValue(tableName, op)
	out, err := h.guard(func() (goja.Value, error) { return t.merge(goja.Undefined(), arg) })
	var res Result
	if err != nil {
		err = h.describe("merge for table "+tableName, err)
	} else if res, err = h.result(op, out); err != nil {
		err = fmt.Errorf("merge for table %s returned a malformed result: %w", tableName, err)
	}
	if h.convErr != nil {
		return Result{}, fmt.Errorf("merge for table %s: %w", tableName, h.convErr)
	}
	return res, err
}

// guard runs fn with the Host's deadline. The interrupt is cleared after
// every call, also when the timer fired just as fn returned, so the next
// call never starts interrupted.
func (h *Host) guard(fn func() (goja.Value, error)) (goja.Value, error) {
	h.deadline.Reset(h.timeout)
	h.calling = true
	v, err := fn()
	h.calling = false
	if !h.deadline.Stop() {
		// It fired: wait until its interrupt is in, so that the clear
		// below is the last word.
		<-h.fired
	}
	h.vm.ClearInterrupt()
	return v, err
}

// describe turns a goja error into one that says what happened where.
func (h *Host) describe(what string, err error) error {
	var intr *goja.InterruptedError
	if errors.As(err, &intr) {
		return fmt.Errorf("%s exceeded %s (a loop that never ends?): %w", what, h.timeout, ErrTimeout)
	}
	var so *goja.StackOverflowError
	if errors.As(err, &so) {
		return fmt.Errorf("%s overflowed the call stack (more than %d nested calls; runaway recursion?)%s", what, maxCallStack, so.Error())
	}
	var ex *goja.Exception
	if errors.As(err, &ex) {
		msg := ex.Error()
		return fmt.Errorf("%s threw: %s", what, msg)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func isArray(o *goja.Object) bool    { return o.ClassName() == "Array" }
func isFunction(o *goja.Object) bool { _, ok := goja.AssertFunction(o); return ok }

// typeOf names a JavaScript value's type for error messages.
func typeOf(v goja.Value) string {
	switch {
	case v == nil || goja.IsUndefined(v):
		return "undefined"
	case goja.IsNull(v):
		return "null"
	}
	if _, ok := v.(*goja.Symbol); ok {
		return "a symbol"
	}
	if o, ok := v.(*goja.Object); ok {
		switch {
		case isFunction(o):
			return "a function"
		case isArray(o):
			return "an array"
		}
		return "an object"
	}
	switch v.Export().(type) {
	case string:
		return fmt.Sprintf("the string %q", v.String())
	case bool:
		return "the boolean " + v.String()
	case int64, float64:
		return "the number " + v.String()
	}
	return "a " + v.ExportType().String()
}
