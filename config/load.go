package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/votr-dev/votr/internal/suggest"
	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/script"
	"github.com/votr-dev/votr/sink"
	"github.com/votr-dev/votr/workload"
)

// Defaults of the topology file (docs/topology.md lists them all).
const (
	DefaultConnect    = "local"
	DefaultCandidates = 128
	DefaultWorkers    = 1
	DefaultDrainDelay = time.Minute
	DefaultScript     = "scripts/votr.ts"
)

// Bounds that catch typos (an extra zero) before they turn into a server
// refusing connections or a seed that never ends.
const (
	maxSpokeID    = 999999
	maxSpokes     = 100
	maxCandidates = 1000000
	maxWorkers    = 256
	maxDatabase   = 48 // slot names are <database>_to_<id>; PostgreSQL names end at 63 bytes
	maxName       = 32
	maxFileSize   = 1 << 20
)

var (
	topKeys      = []string{"hub", "spokes", "candidates", "workers", "drainDelay", "hubWorkers", "maxBallots", "script", "workload", "sink"}
	regionKeys   = []string{"id", "name", "connect", "database"}
	workloadKeys = []string{"ballotsPerTxn", "maxCandidates", "maxVotes", "interval", "candidateUpdateEvery", "validateEvery", "reportEvery", "failFast"}
	sinkKeys     = []string{"batchTxns", "batchRows", "batchBytes", "mergeTimeout", "retries", "onScriptError", "slotWarnBytes", "tombstoneEvery", "tombstoneMargin", "sharedHubSlot"}

	identifier  = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	yamlLineErr = regexp.MustCompile(`(?s)^yaml: line (\d+): (.*)$`)
	reservedDBs = []string{"postgres", "template0", "template1"}
)

// LoadFile reads a topology file, taking ${VAR} values from the process environment.
func LoadFile(path string) (*Topology, error) { return Load(path, os.LookupEnv) }

// Load reads and validates the topology file at path. env looks up ${VAR}
// references (nil: no variables are set). On failure the error is an Errors
// holding every problem found, each with its file:line:col.
func Load(path string, env func(string) (string, bool)) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		reason := "cannot read it; check the path and its permissions"
		switch {
		case errors.Is(err, fs.ErrNotExist):
			reason = "no such file; check the path (examples/local.yaml is a starting point)"
		case errors.Is(err, fs.ErrPermission):
			reason = "permission denied; make the file readable"
		}
		var pe *fs.PathError
		if errors.As(err, &pe) && pe.Op == "read" {
			reason = "cannot read it (is it a directory?); give the path of a .yaml file"
		}
		return nil, Errors{{File: path, Msg: reason}}
	}
	return Parse(path, data, env)
}

// Parse validates a topology held in memory as if it were read from path
// (relative paths in it are resolved against path's directory).
func Parse(path string, data []byte, env func(string) (string, bool)) (*Topology, error) {
	l := &loader{file: path, env: env}
	t := l.parse(data)
	if len(l.errs) > 0 {
		return nil, l.errs.sorted()
	}
	return t, nil
}

type loader struct {
	file string
	env  func(string) (string, bool)
	errs Errors
}

// entry is one key of a mapping with its value (nil when the key is absent).
type entry struct{ key, val *yaml.Node }

func (e entry) ok() bool { return e.val != nil }

func (l *loader) errorf(n *yaml.Node, format string, args ...any) {
	line, col := 1, 1
	if n != nil && n.Line > 0 {
		line, col = n.Line, max(n.Column, 1)
	}
	l.errs = append(l.errs, &Error{File: l.file, Line: line, Col: col, Msg: fmt.Sprintf(format, args...)})
}

func pos(n *yaml.Node) Pos {
	if n == nil || n.Line == 0 {
		return Pos{1, 1}
	}
	return Pos{n.Line, max(n.Column, 1)}
}

// resolve follows aliases (*name) to the node they stand for.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "nothing"
		}
		return short(n.Value)
	}
	return "something else"
}

// short quotes a value for a message, cut so a message stays one line.
func short(s string) string {
	if utf8.RuneCountInString(s) > 40 {
		s = string([]rune(s)[:40]) + "…"
	}
	return strconv.Quote(s)
}

func (l *loader) parse(data []byte) *Topology {
	t := &Topology{Path: l.file, Dir: filepath.Dir(l.file)}
	if abs, err := filepath.Abs(t.Dir); err == nil {
		t.Dir = abs
	}
	if len(data) > maxFileSize {
		l.errorf(nil, "the file is larger than 1 MiB; a topology file is a few dozen lines: check that this is the right file")
		return nil
	}
	if len(bytes.TrimSpace(data)) == 0 {
		l.errorf(nil, "the file is empty; a topology needs at least hub: and spokes: (see examples/local.yaml)")
		return nil
	}
	root := l.decode(data)
	if root == nil {
		return nil
	}
	top := l.fields(root, "at the top level", topKeys)
	if top == nil {
		return nil
	}

	hub, hubOK := l.hub(root, top["hub"])
	spokes := l.spokes(root, top["spokes"])

	t.Candidates = l.integer(top["candidates"], "candidates", DefaultCandidates, 1, maxCandidates,
		"the number of candidates seeded in every region")
	t.Workers = l.integer(top["workers"], "workers", DefaultWorkers, 1, maxWorkers,
		"workers per spoke; each holds one connection")
	t.DrainDelay = l.duration(top["drainDelay"], "drainDelay", DefaultDrainDelay, 0, 24*time.Hour)
	t.HubWorkers = l.hubWorkers(top["hubWorkers"], len(spokes))
	t.MaxBallots = l.integer(top["maxBallots"], "maxBallots", 0, 0, 1<<40,
		"ballots cast in all by the run before it drains and ends; 0 no limit")
	t.Workload = l.workload(top["workload"], t.Candidates)
	t.Sink = l.sink(top["sink"])
	t.Script, t.Program = l.script(root, top["script"], t.Dir, t.Sink.MergeTimeout)

	if hubOK {
		t.Hub = hub.Region
	}
	all := spokes
	if hubOK {
		all = append([]regionSrc{hub}, spokes...)
	}
	l.unique(all)
	for _, s := range spokes {
		t.Spokes = append(t.Spokes, s.Region)
	}
	return t
}

// decode parses the YAML into its root node, reporting syntax errors and
// files that are not a single mapping.
func (l *loader) decode(data []byte) (root *yaml.Node) {
	// yaml.v3 has panicked on hostile input in the past; a topology loader
	// must report, not crash.
	defer func() {
		if r := recover(); r != nil {
			l.errorf(nil, "the YAML parser failed on this file; check its syntax")
			root = nil
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			l.errorf(nil, "the file holds only comments; a topology needs at least hub: and spokes: (see examples/local.yaml)")
		} else {
			l.yamlError(err)
		}
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		l.yamlError(err)
		return nil
	default:
		l.errorf(&extra, "a second YAML document starts here; a topology file holds one document: remove the --- separator and what follows")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		l.errorf(nil, "the file holds no YAML document; a topology needs at least hub: and spokes:")
		return nil
	}
	root = resolve(doc.Content[0])
	if root == nil || isNull(root) {
		l.errorf(root, "the file holds no settings; a topology needs at least hub: and spokes: (see examples/local.yaml)")
		return nil
	}
	if root.Kind != yaml.MappingNode {
		l.errorf(root, "the top level is %s, not a mapping; write keys like hub: and spokes: at the start of lines (see examples/local.yaml)", describe(root))
		return nil
	}
	return root
}

func (l *loader) yamlError(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if m := yamlLineErr.FindStringSubmatch(err.Error()); m != nil {
		if n, convErr := strconv.Atoi(m[1]); convErr == nil && n > 0 {
			line = n
		}
		msg = m[2]
	}
	l.errs = append(l.errs, &Error{File: l.file, Line: line, Col: 1,
		Msg: "YAML syntax error: " + msg + "; check the indentation, colons and quotes on this line and the one before"})
}

// fields reads a mapping, reporting unknown (with a suggestion) and repeated
// keys. It returns nil if n is not a mapping.
func (l *loader) fields(n *yaml.Node, where string, known []string) map[string]entry {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		return nil
	}
	out := make(map[string]entry)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			l.errorf(k, "a key %s is %s; keys are plain names like %s", where, describe(k), known[0])
			continue
		}
		if !contains(known, k.Value) {
			if s := suggest.Closest(k.Value, known); s != "" {
				l.errorf(k, "unknown key %s %s; did you mean %s?", short(k.Value), where, s)
			} else {
				l.errorf(k, "unknown key %s %s; valid keys are %s", short(k.Value), where, strings.Join(known, ", "))
			}
			continue
		}
		if prev, dup := out[k.Value]; dup {
			l.errorf(k, "%s is given twice (first at line %d); keep one", k.Value, prev.key.Line)
			continue
		}
		out[k.Value] = entry{key: k, val: v}
	}
	return out
}

// hubWorkers reads the hubWorkers key: the hub runs workers by default
// with exactly one spoke (two regions that both write); with more spokes it
// only receives, as in the original.
func (l *loader) hubWorkers(e entry, spokes int) bool {
	def := spokes == 1
	if !e.ok() {
		return def
	}
	on := l.boolean(e, "hubWorkers", def)
	if on && spokes > 1 {
		l.errorf(e.val, "hubWorkers: true needs exactly one spoke (2-DC); with %d spokes the hub only receives", spokes)
		return def
	}
	return on
}

// workload starts from the workers' defaults and overrides the keys given.
// maxCandidates defaults to at most the candidates seeded.
func (l *loader) workload(e entry, candidates int) workload.Options {
	w := workload.DefaultOptions()
	w.MaxCandidates = min(w.MaxCandidates, candidates)
	f := l.section(e, "workload", workloadKeys)
	if f == nil {
		l.validate(e, w.Validate())
		return w
	}
	w.BallotsPerTxn = l.integer(f["ballotsPerTxn"], "ballotsPerTxn", w.BallotsPerTxn, 0, 10000,
		"ballots in one transaction; 0 uses maxVotes per candidate instead")
	if mc := f["maxCandidates"]; mc.ok() {
		w.MaxCandidates = l.integer(mc, "maxCandidates", w.MaxCandidates, 1, max(candidates, 1),
			"candidates voted for in one transaction, at most candidates")
	}
	w.MaxVotes = l.integer(f["maxVotes"], "maxVotes", w.MaxVotes, 1, 1000, "votes per candidate in one transaction")
	w.Interval = l.duration(f["interval"], "interval", w.Interval, 0, time.Hour)
	w.CandidateUpdateEvery = l.integer(f["candidateUpdateEvery"], "candidateUpdateEvery", w.CandidateUpdateEvery, 0, 1000000,
		"one transaction in this many updates a candidate; 0 never")
	w.ValidateEvery = l.duration(f["validateEvery"], "validateEvery", w.ValidateEvery, time.Millisecond, time.Hour)
	w.ReportEvery = l.duration(f["reportEvery"], "reportEvery", w.ReportEvery, time.Millisecond, time.Hour)
	w.FailFast = l.boolean(f["failFast"], "failFast", w.FailFast)
	l.validate(e, w.Validate())
	return w
}

// sink starts from the sinks' defaults and overrides the keys given.
func (l *loader) sink(e entry) sink.Options {
	o := sink.DefaultOptions()
	f := l.section(e, "sink", sinkKeys)
	if f == nil {
		l.validate(e, o.Validate())
		return o
	}
	o.BatchTxns = l.integer(f["batchTxns"], "batchTxns", o.BatchTxns, 1, 100000, "source transactions per target transaction")
	o.BatchRows = l.integer(f["batchRows"], "batchRows", o.BatchRows, 1, 10000000, "row changes buffered before writing")
	o.BatchBytes = l.size(f["batchBytes"], "batchBytes", o.BatchBytes)
	if v := f["batchBytes"]; v.ok() && (o.BatchBytes < sink.MinBatchBytes || o.BatchBytes > sink.MaxBatchBytes) {
		l.errorf(v.val, "batchBytes is %d bytes; it must be between 64KiB and 1GiB (row data per chunk and group)", o.BatchBytes)
		o.BatchBytes = sink.DefaultBatchBytes
	}
	o.MergeTimeout = l.duration(f["mergeTimeout"], "mergeTimeout", o.MergeTimeout, time.Millisecond, time.Minute)
	o.Retries = l.integer(f["retries"], "retries", o.Retries, 0, 100, "retries of a failing merge")
	if v := f["onScriptError"]; v.ok() {
		if s, shown, ok := l.scalar(v, "onScriptError", "deadletter or stop"); ok {
			switch sink.OnScriptError(s) {
			case sink.DeadLetter, sink.StopFeed:
				o.OnScriptError = sink.OnScriptError(s)
			default:
				l.errorf(v.val, "onScriptError is %s; use deadletter (park the change in votr.dead_letters) or stop (stop the feed)", short(shown))
			}
		}
	}
	o.SlotWarnBytes = l.size(f["slotWarnBytes"], "slotWarnBytes", o.SlotWarnBytes)
	o.TombstoneEvery = l.duration(f["tombstoneEvery"], "tombstoneEvery", o.TombstoneEvery, time.Second, 24*time.Hour)
	o.TombstoneMargin = l.duration(f["tombstoneMargin"], "tombstoneMargin", o.TombstoneMargin, time.Second, 7*24*time.Hour)
	o.SharedHubSlot = l.boolean(f["sharedHubSlot"], "sharedHubSlot", o.SharedHubSlot)
	l.validate(e, o.Validate())
	return o
}

// validate reports what the engine's own Validate refuses, at the section
// (or, when the file has none, at the top of the file). The bounds checked
// above are stricter, so this only fires if the two drift apart.
func (l *loader) validate(e entry, err error) {
	if err == nil {
		return
	}
	var at *yaml.Node
	if e.ok() {
		at = e.key
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, err := range errs {
		l.errorf(at, "%v", err)
	}
}

// section reads an optional nested mapping such as workload: or sink:.
func (l *loader) section(e entry, key string, known []string) map[string]entry {
	if !e.ok() {
		return nil
	}
	v := resolve(e.val)
	if v.Kind != yaml.MappingNode {
		l.errorf(v, "%s is %s, not a mapping; write its settings (%s) indented below it", key, describe(v), strings.Join(known, ", "))
		return nil
	}
	return l.fields(v, "in "+key, known)
}

// script resolves the merge script against the topology's directory,
// compiles it and loads it into a sandbox as a sink would (with the sinks'
// merge deadline), so that a broken script is caught before anything is
// touched: one that does not compile, throws or loops while loading, exports
// no usable tables, names a table votr does not replicate, or leaves a
// replicated table without a merge.
func (l *loader) script(root *yaml.Node, e entry, dir string, deadline time.Duration) (string, *script.Program) {
	rel, path, at := DefaultScript, DefaultScript, root
	if e.ok() {
		at = e.key
		s, shown, ok := l.scalar(e, "script", "the path of the merge script, e.g. scripts/votr.ts")
		if !ok {
			return "", nil
		}
		rel = shown
		if strings.TrimSpace(s) == "" {
			l.errorf(e.val, "script is empty; give the path of the merge script relative to this file, e.g. scripts/votr.ts")
			return "", nil
		}
		path = s
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	// The resolved path is shown only when it holds no expanded variable.
	where := path
	if rel != DefaultScript && strings.Contains(rel, "${") {
		where = rel
	}
	fi, err := os.Stat(path)
	switch {
	case err != nil && !e.ok():
		l.errorf(at, "no script: given and the default %s (%s) does not exist; add script: with the path of the merge script, relative to this file", DefaultScript, where)
		return "", nil
	case err != nil && errors.Is(err, fs.ErrNotExist):
		l.errorf(at, "script %s not found (looked at %s); the path is relative to the topology file's directory", short(rel), where)
		return "", nil
	case err != nil:
		l.errorf(at, "script %s cannot be read; check its permissions", short(rel))
		return "", nil
	case fi.IsDir():
		l.errorf(at, "script %s is a directory; point script: at the .ts file", short(rel))
		return "", nil
	}
	prog, err := script.Compile(path)
	if err != nil {
		// The script's own position comes first so that editors jump to it.
		var ce *script.CompileError
		if errors.As(err, &ce) {
			l.errorf(at, "script %s does not compile: %s:%d:%d: %s; fix the script", short(rel), where, ce.Line, ce.Col, ce.Msg)
		} else {
			l.errorf(at, "script %s cannot be read; check the file", short(rel))
		}
		return "", nil
	}
	host, err := script.NewHost(prog, deadline)
	if err != nil {
		l.errorf(at, "script %s does not load: %v; fix the script", short(rel), err)
		return "", nil
	}
	ok := true
	for _, name := range host.Tables() {
		if contains(schema.Tables, name) {
			continue
		}
		hint := "votr replicates " + strings.Join(schema.Tables, ", ")
		if s := suggest.Closest(name, schema.Tables); s != "" {
			hint = "did you mean " + s + "?"
		}
		l.errorf(at, "script %s configures table %s, which votr does not replicate; %s", short(rel), short(name), hint)
		ok = false
	}
	for _, name := range schema.Tables {
		if c := host.Table(name); !c.HasMerge && c.VersionColumn == "" {
			l.errorf(at, "script %s has no merge for table %s: without one a conflicting change overwrites the target row, so concurrent writes are lost and regions diverge; export tables.%s with a merge function (or a versionColumn), as scripts/votr.ts does", short(rel), name, name)
			ok = false
		}
	}
	if !ok {
		return "", nil
	}
	return path, prog
}
