package script

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// anyOp is a conflicting update of a two-column table.
var anyOp = Op{
	Before:   Row{"id": int64(1), "v": "a"},
	Proposed: Row{"id": int64(1), "v": "b"},
	Target:   Row{"id": int64(1), "v": "c"},
	Meta:     Meta{Source: 1, Target: 0, Table: "t", LSN: "0/16B3748", CommitTime: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)},
}

func TestMergeResults(t *testing.T) {
	cases := []struct {
		name string
		body string // body of merge(op)
		want Result
		err  string // substring of the error; "" = success
	}{
		{"apply", `return {apply: {...op.target, v: "x"}}`, Result{Action: Apply, Row: Row{"id": int64(1), "v": "x"}}, ""},
		{"apply target unchanged", `return {apply: op.target}`, Result{Action: Apply, Row: Row{"id": int64(1), "v": "c"}}, ""},
		{"drop", `return {drop: true}`, Result{Action: Drop}, ""},
		{"delete", `return {delete: true}`, Result{Action: Delete}, ""},
		{"dead letter", `return {deadLetter: "no way"}`, Result{Action: DeadLetter, Reason: "no way"}, ""},
		{"throws", `throw new Error("kaboom " + op.meta.lsn)`, Result{}, "merge for table t threw: Error: kaboom 0/16B3748 at merge ("},
		{"throws a string", `throw "plain"`, Result{}, "threw: plain"},
		{"type error", `return op.nothing.deeper`, Result{}, "TypeError"},
		{"undefined", `return`, Result{}, "got undefined; return exactly one of"},
		{"null", `return null`, Result{}, "got null"},
		{"number", `return 3`, Result{}, "got the number 3"},
		{"array", `return [op.target]`, Result{}, "got an array"},
		{"empty", `return {}`, Result{}, "got an empty object"},
		{"two keys", `return {apply: op.target, drop: true}`, Result{}, "got keys apply, drop together"},
		{"unknown key", `return {dlq: "x"}`, Result{}, `unknown key "dlq"`},
		{"drop false", `return {drop: false}`, Result{}, "drop is the boolean false; it must be true"},
		{"delete 1", `return {delete: 1}`, Result{}, "delete is the number 1; it must be true"},
		{"empty reason", `return {deadLetter: " "}`, Result{}, "deadLetter is the string"},
		{"reason not string", `return {deadLetter: 7}`, Result{}, "deadLetter is the number 7"},
		{"apply null", `return {apply: null}`, Result{}, "apply is null"},
		{"apply string", `return {apply: "row"}`, Result{}, `apply is the string "row"`},
		{"apply unknown column", `return {apply: {...op.target, vv: 1}}`, Result{}, "apply has vv which the table does not have"},
		{"apply missing column", `return {apply: {id: 1}}`, Result{}, "apply lacks v (the table's columns are id, v"},
		{"apply undefined value", `return {apply: {id: 1, v: undefined}}`, Result{}, "apply.v is undefined"},
		{"apply nested undefined", `return {apply: {id: 1, v: {a: [1, undefined]}}}`, Result{}, "apply.v.a[1] is undefined"},
		{"apply function", `return {apply: {id: 1, v: () => 1}}`, Result{}, "apply.v is a function"},
		{"apply symbol", `return {apply: {id: 1, v: Symbol("s")}}`, Result{}, "apply.v is"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := hostFor(t, `export const tables = { t: { merge(op: any): any {
				`+c.body+`
			} }, ok: { merge: () => ({ drop: true }) } };`, time.Second)
			got, err := h.Merge("t", anyOp)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error = %v, want one containing %q", err, c.err)
				}
				if !strings.Contains(err.Error(), "table t") {
					t.Errorf("error %q does not name the table", err)
				}
				// The runtime is still usable after a failed merge.
				if r, err := h.Merge("ok", anyOp); err != nil || r.Action != Drop {
					t.Fatalf("call after the failure: %v %v", r, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Merge: %v", err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %#v, want %#v", got, c.want)
			}
		})
	}
}

func TestThrowReportsTypeScriptPosition(t *testing.T) {
	h := hostFor(t, `// line 1
type Unused = { a: number };

export const tables = {
  t: {
    merge(op: any) {
      if (op.target) {
        throw new Error("conflict on " + op.meta.table); // line 8
      }
      return { drop: true };
    },
  },
};
`, time.Second)
	_, err := h.Merge("t", anyOp)
	if err == nil || !strings.Contains(err.Error(), "merge.ts:8:") {
		t.Fatalf("error = %v, want the TypeScript position merge.ts:8:…", err)
	}
}

func TestInfiniteLoopIsInterruptedAndHostStaysUsable(t *testing.T) {
	h := hostFor(t, `export const tables = {
		spin: { merge(op: any): any { for (;;) {} } },
		stubborn: { merge(op: any): any { for (;;) { try { for (;;) {} } catch (e) {} finally { continue; } } } },
		recurse: { merge(op: any): any { const f = (n: number): number => f(n + 1) + 1; return f(0); } },
		ok: { merge(op: any) { return { apply: op.target }; } },
	};`, 100*time.Millisecond)
	for i := 0; i < 3; i++ {
		start := time.Now()
		_, err := h.Merge("spin", anyOp)
		if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "merge for table spin exceeded 100ms") {
			t.Fatalf("spin: error = %v, want a timeout naming the table", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("interrupt took %s", d)
		}
		got, err := h.Merge("ok", anyOp)
		if err != nil || got.Action != Apply || !RowsEqual(got.Row, anyOp.Target) {
			t.Fatalf("call after interrupt: %+v, %v", got, err)
		}
	}
	// The interrupt cannot be caught by the script.
	if _, err := h.Merge("stubborn", anyOp); !errors.Is(err, ErrTimeout) {
		t.Fatalf("stubborn: error = %v, want a timeout", err)
	}
	_, err := h.Merge("recurse", anyOp)
	if err == nil || !strings.Contains(err.Error(), "overflowed the call stack") {
		t.Fatalf("runaway recursion: error = %v, want a stack overflow", err)
	}
	if _, err := h.Merge("ok", anyOp); err != nil {
		t.Fatalf("call after stack overflow: %v", err)
	}
}

func TestSandboxHasNoHostAccess(t *testing.T) {
	h := hostFor(t, `export const tables = { t: { merge(op: any) {
		const g: any = globalThis;
		const names = ["require", "process", "fetch", "XMLHttpRequest", "setTimeout", "setInterval", "Deno", "Bun", "os", "fs"];
		return { deadLetter: names.map((n) => n + "=" + typeof g[n]).join(" ") };
	} } };`, time.Second)
	got, err := h.Merge("t", anyOp)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(got.Reason) {
		if !strings.HasSuffix(f, "=undefined") {
			t.Errorf("sandbox exposes %s", f)
		}
	}

	// A script that imports a module fails to load, saying why.
	_, err = NewHost(compileSource(t, "imp.ts", `import { readFileSync } from "fs";
export const tables = { t: { merge() { readFileSync("/etc/passwd"); return { drop: true }; } } };`), time.Second)
	if err == nil || !strings.Contains(err.Error(), "require is not defined") || !strings.Contains(err.Error(), "cannot import modules") {
		t.Fatalf("importing fs: error = %v", err)
	}
}

func TestCompileErrorHasPosition(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broken.ts")
	if err := os.WriteFile(path, []byte("export const tables = {\n  t: { merge(op) { return {drop: true} } },\n  u: { merge(op) { return ) } },\n};\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Compile(path)
	var ce *CompileError
	if !errors.As(err, &ce) {
		t.Fatalf("error = %v, want a *CompileError", err)
	}
	if ce.File != path || ce.Line != 3 || ce.Col != 27 {
		t.Fatalf("position %s:%d:%d, want %s:3:27 (%v)", ce.File, ce.Line, ce.Col, path, ce)
	}
	if !strings.HasPrefix(err.Error(), path+":3:27: ") {
		t.Fatalf("message %q does not start with file:line:col", err)
	}
	if _, err := Compile(filepath.Join(t.TempDir(), "missing.ts")); err == nil || !strings.Contains(err.Error(), "missing.ts") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestBadExports(t *testing.T) {
	cases := []struct{ name, src, err string }{
		{"no exports", `const x = 1;`, "does not export `tables`"},
		{"other export", `export const tablez = {};`, "does not export `tables`"},
		{"default export", `export default { t: {} };`, "default export but no `tables` export"},
		{"tables not object", `export const tables = 5;`, "exported `tables` is the number 5"},
		{"tables array", `export const tables = [];`, "exported `tables` is an array"},
		{"tables null", `export const tables = null;`, "exported `tables` is null"},
		{"entry not object", `export const tables = { ballots: true };`, "tables.ballots is the boolean true"},
		{"merge not function", `export const tables = { ballots: { merge: "mine" } };`, `tables.ballots.merge is the string "mine"; it must be a function`},
		{"version not string", `export const tables = { candidates: { versionColumn: 3 } };`, "tables.candidates.versionColumn is the number 3"},
		{"version empty", `export const tables = { candidates: { versionColumn: "" } };`, "tables.candidates.versionColumn is the string"},
		{"unknown property", `export const tables = { totals: { merg(op: any) { return {drop: true}; } } };`, `tables.totals has unknown property "merg"`},
		{"throws at load", `throw new Error("nope"); export const tables = {};`, "evaluating the script threw: Error: nope"},
		{"module.exports replaced", `module.exports = 42;`, "module.exports is the number 42"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewHost(compileSource(t, "bad.ts", "declare const module: any;\n"+c.src), time.Second)
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("error = %v, want one containing %q", err, c.err)
			}
			if !strings.Contains(err.Error(), "bad.ts") {
				t.Errorf("error %q does not name the script", err)
			}
		})
	}
	if _, err := NewHost(nil, time.Second); err == nil {
		t.Fatal("nil program accepted")
	}
	if _, err := NewHost(compileSource(t, "ok.ts", "export const tables = {};"), -time.Second); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("negative timeout: %v", err)
	}
}

func TestLoadTimeout(t *testing.T) {
	start := time.Now()
	_, err := NewHost(compileSource(t, "spin.ts", "while (true) {}\nexport const tables = {};"), 100*time.Millisecond)
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "evaluating the script exceeded 100ms") {
		t.Fatalf("error = %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("interrupt too slow")
	}
}

func TestTableConfig(t *testing.T) {
	h := hostFor(t, `export const tables = {
		b: { merge: () => ({ drop: true }) },
		a: { versionColumn: "version" },
		c: { versionColumn: "v", merge: () => ({ drop: true }) },
		d: {},
	};`, time.Second)
	if got, want := h.Tables(), []string{"a", "b", "c", "d"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Tables() = %v, want %v", got, want)
	}
	want := map[string]TableConfig{
		"a": {VersionColumn: "version"}, "b": {HasMerge: true},
		"c": {HasMerge: true, VersionColumn: "v"}, "d": {}, "unknown": {},
	}
	for name, w := range want {
		if got := h.Table(name); got != w {
			t.Errorf("Table(%q) = %+v, want %+v", name, got, w)
		}
	}
}

func TestBuiltinRules(t *testing.T) {
	h := hostFor(t, `export const tables = { lww: { versionColumn: "version" }, plain: {} };`, time.Second)
	row := func(version any, v string) Row { return Row{"id": int64(1), "version": version, "v": v} }
	cases := []struct {
		name, table string
		op          Op
		want        Result
		err         string
	}{
		{"newer wins", "lww", Op{Proposed: row(int64(3), "p"), Target: row(2.0, "t")}, Result{Action: Apply, Row: row(int64(3), "p")}, ""},
		{"tie keeps target", "lww", Op{Proposed: row(int64(2), "p"), Target: row(2.0, "t")}, Result{Action: Drop}, ""},
		{"older keeps target", "lww", Op{Proposed: row(int64(1), "p"), Target: row(int64(2), "t")}, Result{Action: Drop}, ""},
		{"null is oldest", "lww", Op{Proposed: row(int64(1), "p"), Target: row(nil, "t")}, Result{Action: Apply, Row: row(int64(1), "p")}, ""},
		{"strings", "lww", Op{Proposed: row("2024-02-01", "p"), Target: row("2024-01-31", "t")}, Result{Action: Apply, Row: row("2024-02-01", "p")}, ""},
		{"no target", "lww", Op{Proposed: row(int64(1), "p")}, Result{Action: Apply, Row: row(int64(1), "p")}, ""},
		// Ties: the same winner whichever side arrives first.
		{"tie broken by content (proposed wins)", "lww", Op{Proposed: row(int64(2), "z"), Target: row(2.0, "t")}, Result{Action: Apply, Row: row(int64(2), "z")}, ""},
		{"tie broken by content (target wins)", "lww", Op{Proposed: row(2.0, "t"), Target: row(int64(2), "z")}, Result{Action: Drop}, ""},
		{"int64 beyond 2^53 compared exactly", "lww", Op{Proposed: row(int64(1<<53+1), "a"), Target: row(int64(1<<53), "b")}, Result{Action: Apply, Row: row(int64(1<<53+1), "a")}, ""},
		{"decimal string against a number", "lww", Op{Proposed: row("10", "a"), Target: row(int64(9), "b")}, Result{Action: Apply, Row: row("10", "a")}, ""},
		{"numeric strings compared as numbers", "lww", Op{Proposed: row("10.5", "a"), Target: row("9.75", "b")}, Result{Action: Apply, Row: row("10.5", "a")}, ""},
		// Deletes leave tombstones: the image they deleted.
		{"delete of a newer row keeps it", "lww", Op{Before: row(int64(1), "b"), Target: row(int64(2), "t")}, Result{Action: Drop, Tombstone: row(int64(1), "b")}, ""},
		{"delete", "lww", Op{Before: row(int64(2), "t"), Target: row(int64(2), "t")}, Result{Action: Delete, Tombstone: row(int64(2), "t")}, ""},
		{"delete of nothing leaves a tombstone", "lww", Op{Before: row(int64(1), "b")}, Result{Action: Drop, Tombstone: row(int64(1), "b")}, ""},
		{"delete keeps the newer tombstone", "lww", Op{Before: row(int64(1), "b"), Deleted: row(int64(3), "d")}, Result{Action: Drop}, ""},
		{"delete behind a tombstone", "lww", Op{Before: row(int64(1), "b"), Target: row(int64(2), "t"), Deleted: row(int64(3), "d")}, Result{Action: Delete, Tombstone: row(int64(3), "d")}, ""},
		{"older than the tombstone stays deleted", "lww", Op{Proposed: row(int64(2), "p"), Deleted: row(int64(3), "d")}, Result{Action: Drop}, ""},
		{"newer than the tombstone comes back", "lww", Op{Proposed: row(int64(4), "p"), Deleted: row(int64(3), "d")}, Result{Action: Apply, Row: row(int64(4), "p")}, ""},
		{"plain delete", "plain", Op{Before: row(int64(1), "b"), Target: row(int64(2), "t")}, Result{Action: Delete}, ""},
		{"plain overwrites a tombstone", "plain", Op{Proposed: row(int64(1), "p"), Deleted: row(int64(3), "d")}, Result{Action: Apply, Row: row(int64(1), "p")}, ""},
		{"missing version", "lww", Op{Proposed: Row{"id": int64(1)}, Target: row(int64(1), "t")}, Result{}, `no column "version"`},
		{"mixed kinds", "lww", Op{Proposed: row("x", "p"), Target: row(int64(1), "t")}, Result{}, "cannot compare"},
		{"plain overwrites", "plain", Op{Proposed: row(int64(1), "p"), Target: row(int64(9), "t")}, Result{Action: Apply, Row: row(int64(1), "p")}, ""},
		{"unconfigured overwrites", "other", Op{Proposed: row(int64(1), "p"), Target: row(int64(9), "t")}, Result{Action: Apply, Row: row(int64(1), "p")}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := h.Merge(c.table, c.op)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %#v, want %#v", got, c.want)
			}
		})
	}
}

func TestValueConversion(t *testing.T) {
	// The merge reports what it received (as typeof/value pairs) and returns
	// values of every kind, so both directions are checked.
	h := hostFor(t, `export const tables = { t: { merge(op: any) {
		const p = op.proposed;
		if (op.target === null) {
			return { deadLetter: JSON.stringify({
				types: Object.keys(p).map((k) => k + ":" + (Array.isArray(p[k]) ? "array" : typeof p[k])),
				values: p, before: op.before, meta: op.meta,
			}) };
		}
		return { apply: {
			int: 7, float: 1.5, whole: 2.0, neg: -3, big: "12345678901234567890", bigint: BigInt("9007199254740993"),
			str: "s", bool: true, nul: null, arr: [1, "a", null, [2]], obj: { x: { y: 1 } },
			date: new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 6)),
		} };
	} } };`, time.Second)
	in := Row{
		"small": int64(42), "huge": int64(1) << 60, "neghuge": -(int64(1) << 60), "float": 0.25, "i32": int32(-5),
		"num": jsonNumber("17"), "bool": false, "nul": nil, "str": "x",
		"json": map[string]any{"1": map[string]any{"c": 2.0, "n": jsonNumber("3")}}, "arr": []any{int64(1), "b"},
		"uuid": [16]byte{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8},
		"ts":   time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	got, err := h.Merge("t", Op{Proposed: in, Meta: Meta{Source: 2, Target: 0, LSN: "0/1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"small":42`, `"huge":"1152921504606846976"`, `"neghuge":"-1152921504606846976"`, `"float":0.25`,
		`"i32":-5`, `"num":17`, `"bool":false`, `"nul":null`, `"json":{"1":{"c":2,"n":3}}`, `"arr":[1,"b"]`,
		`"uuid":"12345678-9abc-def0-0102-030405060708"`, `"ts":"2024-01-02T03:04:05Z"`,
		`"before":null`, `"meta":{"source":2,"target":0,"table":"t","lsn":"0/1","commitTime":null}`,
		`"types":["arr:array","bool:boolean","float:number","huge:string","i32:number","json:object","neghuge:string","nul:object","num:number","small:number","str:string","ts:string","uuid:string"]`,
	} {
		if !strings.Contains(got.Reason, want) {
			t.Errorf("script saw %s\nmissing %s", got.Reason, want)
		}
	}

	cols := Row{}
	for _, k := range []string{"int", "float", "whole", "neg", "big", "bigint", "str", "bool", "nul", "arr", "obj", "date"} {
		cols[k] = nil
	}
	got, err = h.Merge("t", Op{Proposed: cols, Target: cols})
	if err != nil {
		t.Fatal(err)
	}
	want := Row{
		"int": int64(7), "float": 1.5, "whole": int64(2), "neg": int64(-3), "big": "12345678901234567890",
		"bigint": int64(9007199254740993), "str": "s", "bool": true, "nul": nil,
		"arr": []any{int64(1), "a", nil, []any{int64(2)}}, "obj": map[string]any{"x": map[string]any{"y": int64(1)}},
		"date": time.Date(2024, 1, 2, 3, 4, 5, 6e6, time.UTC),
	}
	if !reflect.DeepEqual(got.Row["date"].(time.Time).UTC(), want["date"]) {
		t.Errorf("date = %v", got.Row["date"])
	}
	delete(got.Row, "date")
	delete(want, "date")
	if !reflect.DeepEqual(got.Row, want) {
		t.Errorf("exported %#v\nwant     %#v", got.Row, want)
	}

	if _, err := h.Merge("t", Op{Proposed: Row{"bad": struct{}{}}}); err == nil || !strings.Contains(err.Error(), "proposed.bad") {
		t.Errorf("unsupported Go type: %v", err)
	}
}

func TestConsoleGoesToLogger(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p := compileSource(t, "talk.ts", `console.log("loaded", 1);
export const tables = { t: { merge(op: any) { console.warn("merging", op.meta.table); return { drop: true }; } } };`)
	h, err := NewHost(p, time.Second, WithLogger(l))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Merge("t", anyOp); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{`level=INFO msg="loaded 1"`, `level=WARN msg="merging t"`, "script=" + p.Path} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q lacks %q", out, want)
		}
	}
	// Without a logger, console output is discarded and does not fail.
	if _, err := NewHost(p, time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestRowsEqual(t *testing.T) {
	ts := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		a, b Row
		want bool
	}{
		{Row{"n": int64(3)}, Row{"n": 3.0}, true},
		{Row{"n": int64(3)}, Row{"n": jsonNumber("3")}, true},
		{Row{"n": int64(1) << 60}, Row{"n": jsonNumber("1152921504606846976")}, true},
		{Row{"n": int64(1)<<60 + 1}, Row{"n": float64(int64(1) << 60)}, false},
		{Row{"n": int64(3)}, Row{"n": "3"}, false},
		{Row{"w": map[string]any{"1": map[string]any{"c": 2.0}}}, Row{"w": map[string]any{"1": map[string]any{"c": int64(2)}}}, true},
		{Row{"w": map[string]any{"1": 1.0}}, Row{"w": map[string]any{"1": 1.0, "2": 1.0}}, false},
		{Row{"a": []any{int64(1)}}, Row{"a": []any{1.0}}, true},
		{Row{"a": nil}, Row{}, false},
		{Row{"a": nil}, Row{"a": nil}, true},
		{Row{"t": ts}, Row{"t": ts.In(time.FixedZone("x", 3600))}, true},
		{nil, Row{}, false},
		{nil, nil, true},
	}
	for i, c := range cases {
		if got := RowsEqual(c.a, c.b); got != c.want {
			t.Errorf("case %d: RowsEqual(%v, %v) = %v", i, c.a, c.b, got)
		}
		if got := RowsEqual(c.b, c.a); got != c.want {
			t.Errorf("case %d: RowsEqual(%v, %v) = %v (swapped)", i, c.b, c.a, got)
		}
	}
}

// TestConversionErrorsNamePath checks that a value a merge cannot take or
// give is named by its full path, also on a Host whose previous
// conversion failed half-way (the Host reuses one path for every walk).
func TestConversionErrorsNamePath(t *testing.T) {
	// The merge reads every row and swallows what it throws: a value that
	// cannot be converted fails the merge all the same.
	h := hostFor(t, `export const tables = { t: { merge(op: any): any {
		try { void [op.before, op.proposed, op.target, op.deleted]; } catch (e) {}
		return { apply: { id: 1, v: { a: [1, undefined] } } };
	} } };`, time.Second)
	for _, c := range []struct {
		name string
		op   Op
		err  string
	}{
		{"top-level Go type", Op{Proposed: Row{"bad": struct{}{}}}, "merge for table t: proposed.bad: values of Go type struct {} cannot be passed"},
		{"nested in a map and an array", Op{Target: Row{"v": map[string]any{"a": []any{int64(1), struct{}{}}}}}, "merge for table t: target.v.a[1]: values of Go type"},
		{"bad number", Op{Before: Row{"id": int64(1), "n": json.Number("x1")}}, `merge for table t: before.n: "x1" is not a number`},
		{"result after failed walks", Op{Proposed: Row{"id": int64(1), "v": nil}}, "merge for table t returned a malformed result: apply.v.a[1] is undefined"},
		{"again after a failed result", Op{Deleted: Row{"w": map[string]any{"x": struct{}{}}}}, "merge for table t: deleted.w.x: values of Go type"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := h.Merge("t", c.op)
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("error = %v, want one containing %q", err, c.err)
			}
		})
	}
}

// TestMergeArgumentIsLazy checks the merge's argument (opObject): it acts
// as a plain object, converts a row only when the script reads it, and
// keeps its own rows when a script holds on to it past its call.
func TestMergeArgumentIsLazy(t *testing.T) {
	h := hostFor(t, `let kept: any = null;
	export const tables = {
		shape: { merge(op: any): any {
			const copy = { ...op };
			op.extra = 1;
			op.proposed = { ...op.proposed, n: 2 };
			delete op.meta;
			const seen = [Object.keys(copy).join(), Object.keys(op).join(), "meta" in op, "extra" in op, JSON.stringify(op.before)].join(" ");
			return { apply: { ...op.proposed, seen } };
		} },
		unread: { merge(op: any): any { return { apply: op.proposed }; } },
		keep: { merge(op: any): any {
			const earlier = kept;
			kept = op;
			return { apply: { ...op.proposed, seen: earlier === null ? "" : String(earlier.before.n) } };
		} },
	};`, time.Second)
	for _, c := range []struct {
		table string
		op    Op
		want  Row
	}{
		{"shape", Op{Before: Row{"n": int64(0), "seen": ""}, Proposed: Row{"n": int64(1), "seen": ""}},
			Row{"n": int64(2), "seen": `before,proposed,target,deleted,meta before,proposed,target,deleted,extra false true {"n":0,"seen":""}`}},
		// A before-image the merge never reads is never converted.
		{"unread", Op{Before: Row{"n": struct{}{}}, Proposed: Row{"n": int64(1)}}, Row{"n": int64(1)}},
		{"keep", Op{Before: Row{"n": int64(7)}, Proposed: Row{"n": int64(1), "seen": ""}}, Row{"n": int64(1), "seen": ""}},
		{"keep", Op{Before: Row{"n": int64(8)}, Proposed: Row{"n": int64(2), "seen": ""}}, Row{"n": int64(2), "seen": "7"}},
	} {
		res, err := h.Merge(c.table, c.op)
		if err != nil {
			t.Fatalf("%s: %v", c.table, err)
		}
		if res.Action != Apply || !RowsEqual(res.Row, c.want) {
			t.Errorf("%s: got %v %v, want apply %v", c.table, res.Action, res.Row, c.want)
		}
	}
}
