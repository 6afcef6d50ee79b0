package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/sink"
	"github.com/votr-dev/votr/workload"
)

const minimalTopology = "hub: {}\nspokes: [{id: 1}]\n"

// loadDoc loads a topology made of the minimal one plus extra.
func loadDoc(t *testing.T, extra string) *Topology {
	t.Helper()
	path := filepath.Join(topoDir(t), "votr.yaml")
	writeFile(t, path, minimalTopology+extra)
	top, err := Load(path, nil)
	if err != nil {
		t.Fatalf("load %q: %v", extra, err)
	}
	return top
}

// The engine's DefaultOptions are the single source of the defaults: the
// loader starts from them and changes only the keys a file gives.
func TestOptionsStartFromEngineDefaults(t *testing.T) {
	with := func(o workload.Options, set func(*workload.Options)) workload.Options { set(&o); return o }
	withSink := func(o sink.Options, set func(*sink.Options)) sink.Options { set(&o); return o }
	wd, sd := workload.DefaultOptions(), sink.DefaultOptions()
	cases := []struct {
		name, extra  string
		wantWorkload workload.Options
		wantSink     sink.Options
	}{
		{"no sections", "", wd, sd},
		{"empty sections", "workload: {}\nsink: {}\n", wd, sd},
		// retries used to default to 3 only when no sink key was given.
		{"one sink key", "sink: {batchTxns: 7}\n", wd, withSink(sd, func(o *sink.Options) { o.BatchTxns = 7 })},
		{"zero retries", "sink: {retries: 0}\n", wd, withSink(sd, func(o *sink.Options) { o.Retries = 0 })},
		{"stop", "sink: {onScriptError: stop}\n", wd, withSink(sd, func(o *sink.Options) { o.OnScriptError = sink.StopFeed })},
		{"one workload key", "workload: {interval: 0s}\n", with(wd, func(o *workload.Options) { o.Interval = 0 }), sd},
		{"few candidates", "candidates: 4\n", with(wd, func(o *workload.Options) { o.MaxCandidates = 4 }), sd},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			top := loadDoc(t, c.extra)
			if top.Workload != c.wantWorkload {
				t.Errorf("workload = %+v, want %+v", top.Workload, c.wantWorkload)
			}
			if top.Sink != c.wantSink {
				t.Errorf("sink = %+v, want %+v", top.Sink, c.wantSink)
			}
		})
	}
	// What users get today; the sinks' tests and benchmarks run with the same.
	if sd.MergeTimeout != 5*time.Second || sd.Retries != 3 || sd.BatchTxns != 1000 || sd.BatchRows != 10000 {
		t.Errorf("sink defaults changed: %+v", sd)
	}
	if err := sd.Validate(); err != nil {
		t.Errorf("sink.DefaultOptions do not validate: %v", err)
	}
	if err := wd.Validate(); err != nil {
		t.Errorf("workload.DefaultOptions do not validate: %v", err)
	}
}

// documented is one default stated in the documentation.
type documented struct{ where, section, key, value string }

// tableDefaults reads the default column of the `workload` and `sink`
// tables of docs/topology.md.
func tableDefaults(t *testing.T) []documented {
	t.Helper()
	data, err := os.ReadFile("../docs/topology.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `(\\w+)` \\|[^|]*\\| `([^`]+)`")
	var out []documented
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			section = strings.Trim(h, "`")
			continue
		}
		if section != "workload" && section != "sink" {
			continue
		}
		if m := row.FindStringSubmatch(line); m != nil {
			out = append(out, documented{"docs/topology.md", section, m[1], m[2]})
		}
	}
	return out
}

// proseDefaults finds "`sink.key` … (default VALUE" in the README, the docs
// and the script API's comments (a value like "5 s" is read as "5s").
func proseDefaults(t *testing.T) []documented {
	t.Helper()
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../README.md", "../scripts/votr.d.ts")
	stated := regexp.MustCompile("`(sink|workload)\\.(\\w+)`[^()`]{0,40}\\(default ([^;,)]+)")
	var out []documented
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// Join lines (and the " * " of doc comments) so a statement may wrap.
		text := regexp.MustCompile(`\s*\n\s*(\*\s)?`).ReplaceAllString(string(data), " ")
		for _, m := range stated.FindAllStringSubmatch(text, -1) {
			out = append(out, documented{strings.TrimPrefix(f, "../"), m[1], m[2], strings.ReplaceAll(m[3], " ", "")})
		}
	}
	return out
}

// Every default the documentation states is the engine's: writing the
// stated value into a topology yields the same options as leaving it out.
func TestDocumentedDefaults(t *testing.T) {
	table, prose := tableDefaults(t), proseDefaults(t)
	documentedKeys := map[string]bool{}
	for _, d := range table {
		documentedKeys[d.section+"."+d.key] = true
	}
	for _, k := range workloadKeys {
		if !documentedKeys["workload."+k] {
			t.Errorf("docs/topology.md has no default for workload.%s", k)
		}
	}
	for _, k := range sinkKeys {
		if !documentedKeys["sink."+k] {
			t.Errorf("docs/topology.md has no default for sink.%s", k)
		}
	}
	// The statements this test was written against must still be found, so
	// that a reworded sentence cannot make it pass by finding nothing.
	found := map[string]bool{}
	for _, d := range prose {
		found[d.where+" "+d.section+"."+d.key] = true
	}
	for _, want := range []string{
		"docs/operating.md sink.mergeTimeout", "docs/operating.md sink.retries",
		"docs/regions.md sink.slotWarnBytes", "scripts/votr.d.ts sink.mergeTimeout",
	} {
		if !found[want] {
			t.Errorf("no stated default found for %s; update proseDefaults if the sentence moved", want)
		}
	}
	wd, sd := workload.DefaultOptions(), sink.DefaultOptions()
	for _, d := range append(table, prose...) {
		t.Run(d.where+"/"+d.section+"."+d.key, func(t *testing.T) {
			top := loadDoc(t, d.section+":\n  "+d.key+": "+d.value+"\n")
			if top.Workload != wd || top.Sink != sd {
				t.Errorf("%s states %s.%s defaults to %s, but the defaults are workload %+v, sink %+v; with it set: workload %+v, sink %+v",
					d.where, d.section, d.key, d.value, wd, sd, top.Workload, top.Sink)
			}
		})
	}
}
