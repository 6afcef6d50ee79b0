package faults_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/runner"
)

// votrBin is the votr binary built once for the whole package.
var votrBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "votr-faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: temp dir:", err)
		os.Exit(1)
	}
	votrBin = filepath.Join(dir, "votr")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	build := exec.Command(gobin, "build", "-o", votrBin, "../cmd/votr")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "faults: build votr: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// scriptPath is the project's merge script.
func scriptPath(t testing.TB) string {
	t.Helper()
	p, err := filepath.Abs("../scripts/votr.ts")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// connURL is a topology connect URL for a server.
func connURL(s *localpg.Server) string {
	return s.URL()
}

// startServers starts n fresh servers at once.
func startServers(t *testing.T, n int) []*localpg.Server {
	t.Helper()
	out := make([]*localpg.Server, n)
	var wg sync.WaitGroup
	for i := range out {
		wg.Go(func() { out[i] = pgtest.Start(t) })
	}
	wg.Wait()
	for _, s := range out {
		if s == nil {
			t.Fatalf("could not start %d PostgreSQL servers (see the log above)", n)
		}
	}
	return out
}

// spoke is one spoke of a test topology.
type spoke struct {
	id       int
	name     string
	connect  string
	database string
}

// topo describes a topology file to write.
type topo struct {
	hub        string // connect of the hub
	hubDB      string
	spokes     []spoke
	candidates int
	drainDelay string
	script     string // default: the project's script
	extra      string // more YAML, appended as is
}

// yaml renders the topology file.
func (tp topo) yaml(t testing.TB) string {
	var b strings.Builder
	fmt.Fprintf(&b, "hub:\n  connect: %q\n", tp.hub)
	if tp.hubDB != "" {
		fmt.Fprintf(&b, "  database: %s\n", tp.hubDB)
	}
	b.WriteString("spokes:\n")
	for _, s := range tp.spokes {
		fmt.Fprintf(&b, "  - id: %d\n", s.id)
		if s.name != "" {
			fmt.Fprintf(&b, "    name: %q\n", s.name)
		}
		fmt.Fprintf(&b, "    connect: %q\n", s.connect)
		if s.database != "" {
			fmt.Fprintf(&b, "    database: %s\n", s.database)
		}
	}
	if tp.candidates == 0 {
		tp.candidates = 16
	}
	if tp.drainDelay == "" {
		tp.drainDelay = "60s"
	}
	if tp.script == "" {
		tp.script = scriptPath(t)
	}
	fmt.Fprintf(&b, "candidates: %d\nworkers: 1\ndrainDelay: %s\nscript: %s\n", tp.candidates, tp.drainDelay, tp.script)
	b.WriteString(tp.extra)
	return b.String()
}

// write writes the topology into dir and returns its path.
func (tp topo) write(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "topology.yaml")
	if err := os.WriteFile(path, []byte(tp.yaml(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// load writes and loads the topology.
func (tp topo) load(t testing.TB, dir string) *config.Topology {
	t.Helper()
	path := tp.write(t, dir)
	top, err := config.Load(path, os.LookupEnv)
	if err != nil {
		t.Fatalf("load test topology:\n%s\n%v", tp.yaml(t), err)
	}
	return top
}

// newRunner is a runner that approves by itself and writes its output and
// logs into out.
func newRunner(stateDir string, out io.Writer, interrupt <-chan struct{}) *runner.Runner {
	return runner.New(runner.Options{
		StateDir:    stateDir,
		Out:         out,
		AutoApprove: true,
		Logger:      slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Command:     "votr apply (faults test)",
		Interrupt:   interrupt,
	})
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// regionDB is one region's database, for direct checks.
type regionDB struct {
	name string
	dsn  string
}

// assertConverged checks in the databases themselves that every region
// holds the same ballots, totals and candidates, that ballots = totals per
// candidate, and that each spoke's committed ballots are in every region
// exactly once (committed may be nil: then only convergence is checked).
func assertConverged(t *testing.T, regions []regionDB, committed map[int]int64) {
	t.Helper()
	var first string
	for _, r := range regions {
		// One pass over ballots: the count and an order-independent digest
		// (a sum of row hashes), so that large tables stay cheap to compare.
		state := pgtest.Query(t, r.dsn, `SELECT
			(SELECT count(*) || '/' || coalesce(sum(('x' || substr(md5(candidate::text || ballot::text), 1, 15))::bit(60)::bigint), 0) FROM ballots),
			(SELECT sum(total)::bigint FROM totals),
			(SELECT md5(string_agg(candidate::text || total, ',' ORDER BY candidate)) FROM totals),
			(SELECT md5(string_agg(candidate::text || mood || version, ',' ORDER BY candidate)) FROM candidates)`)[0]
		if first == "" {
			first = state
		} else if state != first {
			t.Errorf("%s differs from %s: %s vs %s", r.name, regions[0].name, state, first)
		}
		if bad := pgtest.Query(t, r.dsn, `SELECT t.candidate::text || ': total ' || t.total || ', ballots ' || coalesce(b.n, 0) FROM totals t
			LEFT JOIN (SELECT candidate, count(*) n FROM ballots GROUP BY candidate) b USING (candidate)
			WHERE t.total <> coalesce(b.n, 0)`); len(bad) > 0 {
			t.Errorf("%s: invariant violated: %v", r.name, bad)
		}
		if committed == nil {
			continue
		}
		bySrc := map[int]int64{}
		for _, row := range pgtest.Query(t, r.dsn, `SELECT src, count(*) FROM ballots GROUP BY src`) {
			var src int
			var n int64
			fmt.Sscanf(row, "%d|%d", &src, &n)
			bySrc[src] = n
		}
		for id, n := range committed {
			if bySrc[id] != n {
				t.Errorf("%s: %d ballots from region %d, which committed %d", r.name, bySrc[id], id, n)
			}
		}
	}
}

// result is one run of the votr binary.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s\n--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// votr runs the binary in dir with args (and extra environment) until it
// exits or timeout passes (then it is killed and the test fails).
func votr(t testing.TB, dir string, env []string, timeout time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, votrBin, args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader("")
	err := cmd.Run()
	res := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("votr %s did not finish within %s\n%s", strings.Join(args, " "), timeout, res)
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("votr %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// cleanEnv is the test's environment without VOTR_* settings, so that a
// developer's own settings do not change what the tests see.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VOTR_") {
			env = append(env, kv)
		}
	}
	return env
}

// process is a votr command running in the background.
type process struct {
	cmd  *exec.Cmd
	out  *testlog.Buffer
	done chan struct{}
	err  error
}

// startVotr starts the binary in the background; the test's cleanup kills it
// if it still runs.
func startVotr(t testing.TB, dir string, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(votrBin, args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), env...)
	p := &process{cmd: cmd, out: &testlog.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// waitOutput waits until the process printed s (failing after d).
func (p *process) waitOutput(t testing.TB, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.out.String(), s) {
		select {
		case <-p.done:
			t.Fatalf("votr exited (%v) before printing %q:\n%s", p.err, s, p.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("votr did not print %q within %s:\n%s", s, d, p.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *process) kill(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// stop sends SIGTERM and returns the exit code once it exits (failing
// after d).
func (p *process) stop(t testing.TB, d time.Duration) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(d):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("votr did not stop within %s of SIGTERM:\n%s", d, p.out)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	return 0
}

// waitFor polls cond every 50ms for up to d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pgtestInt runs a query returning one integer.
func pgtestInt(t testing.TB, dsn, sql string, args ...any) int64 {
	t.Helper()
	return pgtest.QueryInt(t, dsn, sql, args...)
}

func itoa(n int) string { return fmt.Sprint(n) }
