// Package votr_test checks the documentation against the code: every code
// sample in README.md, docs/*.md and the examples in scripts/votr.d.ts
// loads or names real commands, flags and targets, and every default the
// documentation states is the one the code applies; SQL samples run on a
// real server. Not checked: psql, curl and pg_hba lines, which need a
// running votr or a server set up by hand.
package votr_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/internal/pgtest"
)

// sample is one fenced code block of a document.
type sample struct {
	file string
	line int // of the opening fence
	lang string
	text string
}

func (s sample) String() string { return fmt.Sprintf("%s:%d (%s)", s.file, s.line, s.lang) }

// docFiles are the documents whose samples are checked.
func docFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("docs/*.md")
	if err != nil || len(files) == 0 {
		t.Fatalf("docs/*.md: %v %v", files, err)
	}
	return append([]string{"README.md", "scripts/votr.d.ts"}, files...)
}

// samples reads the fenced blocks of every document; in votr.d.ts they are
// inside doc comments, whose " * " prefixes are removed.
func samples(t *testing.T) []sample {
	t.Helper()
	var out []sample
	for _, f := range docFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var cur *sample
		indent := ""
		for i, line := range strings.Split(string(data), "\n") {
			if strings.HasSuffix(f, ".ts") {
				line = regexp.MustCompile(`^\s*\* ?`).ReplaceAllString(line, "")
			}
			trimmed := strings.TrimLeft(line, " ")
			if fence, ok := strings.CutPrefix(trimmed, "```"); ok {
				if cur == nil {
					cur = &sample{file: f, line: i + 1, lang: strings.TrimSpace(fence)}
					indent = line[:len(line)-len(trimmed)]
				} else {
					out = append(out, *cur)
					cur = nil
				}
				continue
			}
			if cur != nil {
				cur.text += strings.TrimPrefix(line, indent) + "\n"
			}
		}
		if cur != nil {
			t.Errorf("%s: unclosed code block", cur)
		}
	}
	return out
}

// docEnv is what the samples' ${VAR} references expand to.
func docEnv(name string) (string, bool) {
	switch name {
	case "VOTR_PASSWORD", "VOTR_PW", "VOTR_HUB_PASSWORD":
		return "pw", true
	}
	return "", false
}

// Every YAML sample loads as a topology (the real merge script included):
// a whole file as it is, a fragment with one connect: line as the hub's.
// The file is placed in examples/, so `script: ../scripts/votr.ts` is
// resolved as the docs mean it.
func TestDocYAMLLoads(t *testing.T) {
	n := 0
	for _, s := range samples(t) {
		if s.lang != "yaml" {
			continue
		}
		n++
		text := s.text
		if !strings.Contains(text, "hub:") {
			if !strings.HasPrefix(text, "connect:") || strings.Count(text, "\n") != 1 {
				t.Errorf("%s: a YAML fragment this test does not know how to load; teach it", s)
				continue
			}
			text = "hub:\n  " + text + "spokes: [{id: 1}]\nscript: ../scripts/votr.ts\n"
		}
		if _, err := config.Parse("examples/doc-sample.yaml", []byte(text), docEnv); err != nil {
			t.Errorf("%s does not load: %v\n%s", s, err, s.text)
		}
	}
	if n < 3 {
		t.Errorf("found only %d YAML samples; did the documents move?", n)
	}
}

// Every TypeScript sample loads as the merge script of a topology, next to
// a copy of votr.d.ts as the sample expects.
func TestDocScriptsLoad(t *testing.T) {
	dts, err := os.ReadFile("scripts/votr.d.ts")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range samples(t) {
		if s.lang != "ts" && s.lang != "typescript" {
			continue
		}
		n++
		dir := t.TempDir()
		must(t, os.MkdirAll(filepath.Join(dir, "scripts"), 0o755))
		must(t, os.WriteFile(filepath.Join(dir, "scripts", "votr.d.ts"), dts, 0o644))
		must(t, os.WriteFile(filepath.Join(dir, "scripts", "sample.ts"), []byte(s.text), 0o644))
		topo := filepath.Join(dir, "votr.yaml")
		must(t, os.WriteFile(topo, []byte("hub: {}\nspokes: [{id: 1}]\nscript: scripts/sample.ts\n"), 0o644))
		if _, err := config.Load(topo, docEnv); err != nil {
			t.Errorf("%s does not load as a merge script: %v\n%s", s, err, s.text)
		}
	}
	if n < 1 {
		t.Error("found no TypeScript sample; did votr.d.ts's example move?")
	}
}

// Every SQL sample runs, in document order, on a real PostgreSQL server as
// its superuser (a password shown as … is given one).
func TestDocSQLRuns(t *testing.T) {
	var stmts []string
	for _, s := range samples(t) {
		if s.lang != "sql" {
			continue
		}
		for _, st := range regexp.MustCompile(`;\s*(--[^\n]*)?\n`).Split(s.text, -1) {
			if st = strings.TrimSpace(st); st != "" {
				stmts = append(stmts, strings.ReplaceAll(st, "…", "pw"))
			}
		}
	}
	if len(stmts) < 4 {
		t.Fatalf("found only %d SQL statements; did the documents move?", len(stmts))
	}
	srv := pgtest.Start(t)
	pgtest.Exec(t, srv.DSN("postgres"), stmts...)
	t.Logf("ran %d statements: %q", len(stmts), stmts)
}

// Every shell line that runs votr uses a real command, only flags that
// command has (per `votr help COMMAND`) and files that exist; every make
// line names a target of the Makefile. Lines that need a running server
// (psql, curl) or a process id are not checkable here.
func TestDocCommands(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "votr")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/votr").CombinedOutput(); err != nil {
		t.Fatalf("build votr: %v\n%s", err, out)
	}
	help := map[string]string{}
	helpOf := func(cmd string) string {
		if h, ok := help[cmd]; ok {
			return h
		}
		out, err := exec.Command(bin, "help", cmd).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Usage: votr "+cmd) {
			out = nil
		}
		help[cmd] = string(out)
		return help[cmd]
	}
	makefile, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, s := range samples(t) {
		if s.lang != "sh" {
			continue
		}
		for _, line := range strings.Split(s.text, "\n") {
			line, _, _ = strings.Cut(line, "#")
			words := strings.Fields(line)
			if len(words) == 0 {
				continue
			}
			switch words[0] {
			case "votr", "bin/votr":
				checked++
				if len(words) < 2 {
					t.Errorf("%s: %q has no command", s, line)
					continue
				}
				h := helpOf(words[1])
				if h == "" {
					t.Errorf("%s: %q: votr has no command %q", s, line, words[1])
					continue
				}
				for _, w := range words[2:] {
					switch {
					case strings.HasPrefix(w, "--"):
						flag, _, _ := strings.Cut(w, "=")
						if !regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(flag) + `\b`).MatchString(h) {
							t.Errorf("%s: %q: votr %s has no flag %s", s, line, words[1], flag)
						}
					case strings.HasSuffix(w, ".yaml"):
						if _, err := os.Stat(w); err != nil {
							t.Errorf("%s: %q: %v", s, line, err)
						}
					}
				}
			case "make":
				checked++
				for _, target := range words[1:] {
					if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `:`).Match(makefile) {
						t.Errorf("%s: %q: the Makefile has no target %s", s, line, target)
					}
				}
			case "go":
				checked++
				if len(words) >= 4 && words[1] == "build" {
					if _, err := os.Stat(words[len(words)-1]); err != nil {
						t.Errorf("%s: %q: %v", s, line, err)
					}
				}
			}
		}
	}
	if checked < 10 {
		t.Errorf("checked only %d shell lines; did the documents move?", checked)
	}
}

// Every default a key table of docs/topology.md states for a top-level key,
// and every "key `K` (default V)" in the README's migration table, is the
// code's: writing the stated value gives the same topology as leaving the
// key out. (The workload and sink keys are checked the same way in
// config's TestDocumentedDefaults.)
func TestDocTopLevelDefaults(t *testing.T) {
	type stated struct{ where, key, value string }
	var all []stated
	data, err := os.ReadFile("docs/topology.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `(\\w+)` \\|[^|]*\\| `([^`]+)` \\|")
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			section = h
			continue
		}
		if m := row.FindStringSubmatch(line); m != nil && section == "Top level" {
			all = append(all, stated{"docs/topology.md", m[1], m[2]})
		}
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile("key `(\\w+)` \\(default ([^)]+)\\)").FindAllStringSubmatch(string(readme), -1) {
		all = append(all, stated{"README.md", m[1], m[2]})
	}
	keys := map[string]bool{}
	for _, s := range all {
		keys[s.where+" "+s.key] = true
	}
	for _, want := range []string{"docs/topology.md candidates", "docs/topology.md workers", "docs/topology.md drainDelay",
		"docs/topology.md maxBallots", "docs/topology.md script", "README.md candidates", "README.md drainDelay"} {
		if !keys[want] {
			t.Errorf("no stated default found for %s; update this test if the sentence moved", want)
		}
	}
	base := "hub: {}\nspokes: [{id: 1}]\n"
	dir := t.TempDir()
	load := func(text string) *config.Topology {
		t.Helper()
		must(t, os.MkdirAll(filepath.Join(dir, "scripts"), 0o755))
		src, err := os.ReadFile("scripts/votr.ts")
		must(t, err)
		must(t, os.WriteFile(filepath.Join(dir, "scripts", "votr.ts"), src, 0o644))
		path := filepath.Join(dir, "votr.yaml")
		must(t, os.WriteFile(path, []byte(text), 0o644))
		top, err := config.Load(path, docEnv)
		if err != nil {
			t.Fatalf("load %q: %v", text, err)
		}
		top.Program = nil
		return top
	}
	want := load(base)
	for _, s := range all {
		if s.value == "required" || strings.Contains(s.value, " ") {
			continue // not a default, or a rule ("true with exactly one spoke, else false")
		}
		t.Run(s.where+"/"+s.key, func(t *testing.T) {
			got := load(base + s.key + ": " + s.value + "\n")
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s states %s defaults to %s, but setting it changes the topology:\n got %+v\nwant %+v", s.where, s.key, s.value, got, want)
			}
		})
	}
}

// The process settings tables (README and docs/topology.md) state the
// defaults LoadSettings applies.
func TestDocSettingsDefaults(t *testing.T) {
	for _, v := range []string{"VOTR_STATE_DIR", "VOTR_LOG_FORMAT", "VOTR_LOG_LEVEL", "VOTR_METRICS_ADDR", "VOTR_UI_ADDR", "VOTR_PG_BIN"} {
		t.Setenv(v, "")
	}
	s, err := config.LoadSettings()
	if err != nil {
		t.Fatal(err)
	}
	code := map[string]string{"VOTR_STATE_DIR": s.StateDir, "VOTR_LOG_FORMAT": s.LogFormat, "VOTR_LOG_LEVEL": s.LogLevel}
	row := regexp.MustCompile("`(VOTR_[A-Z_]+)` \\|(?: `--[a-z-]+` \\|)? `([^`]+)` \\|")
	found := 0
	for _, f := range []string{"README.md", "docs/topology.md"} {
		data, err := os.ReadFile(f)
		must(t, err)
		for _, m := range row.FindAllStringSubmatch(string(data), -1) {
			want, ok := code[m[1]]
			if !ok {
				continue
			}
			found++
			if m[2] != want {
				t.Errorf("%s states %s defaults to %s; the code's default is %s", f, m[1], m[2], want)
			}
		}
	}
	if found < 6 {
		t.Errorf("found %d stated settings defaults, want the three of each table", found)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
