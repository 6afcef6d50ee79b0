package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
)

// votr runs one command line and returns its exit code and output.
func votr(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	code = run(ctx, args, &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb})
	return code, out.String(), errb.String()
}

func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		stdout     []string
		stderr     []string
		noStdout   bool
		usageOnErr bool
	}{
		{args: nil, code: 1, stderr: []string{"Usage:", "Commands:"}},
		{args: []string{"help"}, code: 0, stdout: []string{"Usage:", "plan FILE", "apply FILE", "destroy [FILE]", "check FILE", "sink FILE --feed S:D", "Examples:"}},
		{args: []string{"--help"}, code: 0, stdout: []string{"Commands:"}},
		{args: []string{"help", "apply"}, code: 0, stdout: []string{"Usage: votr apply FILE", "--auto-approve", "--duration D", "--no-sinks", "votr sink", "--state-dir", "VOTR_STATE_DIR", "Examples:"}},
		{args: []string{"help", "plan"}, code: 0, stdout: []string{"--detailed-exitcode", "exit 0 when there is nothing to do, 2 when there are changes"}},
		{args: []string{"help", "destroy"}, code: 0, stdout: []string{"Without FILE it uses what the last apply"}},
		{args: []string{"help", "check"}, code: 0, stdout: []string{"--json"}},
		{args: []string{"help", "sink"}, code: 0, stdout: []string{"--feed S:D", "1:0 is spoke 1 → hub"}},
		{args: []string{"help", "bogus"}, code: 1, stderr: []string{`unknown command "bogus"`, "Commands:"}},
		{args: []string{"apply", "--help"}, code: 0, stdout: []string{"Usage: votr apply FILE"}},
		{args: []string{"apply", "x.yaml", "--help"}, code: 0, stdout: []string{"Usage: votr apply FILE"}},
		{args: []string{"sink", "-h"}, code: 0, stdout: []string{"Usage: votr sink"}},
		{args: []string{"aply", "x.yaml"}, code: 1, stderr: []string{`unknown command "aply"; did you mean "apply"?`, "Commands:"}},
		{args: []string{"frobnicate"}, code: 1, stderr: []string{`unknown command "frobnicate"`}},
		{args: []string{"apply", "x.yaml", "--bogus"}, code: 1, stderr: []string{"votr apply: unknown flag --bogus", "Usage: votr apply FILE"}},
		{args: []string{"plan", "--auto-approve", "x.yaml"}, code: 1, stderr: []string{"votr plan: unknown flag --auto-approve", "Usage: votr plan FILE"}},
		{args: []string{"plan"}, code: 1, stderr: []string{"missing the topology FILE, e.g. votr plan examples/local.yaml", "Usage: votr plan"}},
		{args: []string{"plan", "a.yaml", "b.yaml"}, code: 1, stderr: []string{"one topology FILE expected, got 2: a.yaml b.yaml"}},
		{args: []string{"sink", "a.yaml"}, code: 1, stderr: []string{"--feed S:D is required"}},
		{args: []string{"apply", "a.yaml", "--duration", "soon"}, code: 1, stderr: []string{"--duration", "durations look like 30s"}},
		{args: []string{"apply", "a.yaml", "--duration", "-5s"}, code: 1, stderr: []string{"give a positive duration"}},
		{args: []string{"apply", "a.yaml", "--duration"}, code: 1, stderr: []string{"flag needs an argument"}},
		{args: []string{"apply", "a.yaml", "--no-run", "--no-sinks"}, code: 1, stderr: []string{"--no-run runs nothing"}},
		{args: []string{"apply", "a.yaml", "--report-every", "0s"}, code: 1, stderr: []string{"--report-every 0s: give a positive duration"}},
		{args: []string{"help", "apply"}, code: 0, stdout: []string{"--report-every D", "workload.reportEvery (5s)"}},
		{args: []string{"help", "state"}, code: 0, stdout: []string{"Usage: votr state rm REGION", "Nothing on any server is touched"}},
		{args: []string{"help", "destroy"}, code: 0, stdout: []string{"--skip-unreachable", "--take-over"}},
		{args: []string{"state"}, code: 1, stderr: []string{"want `votr state rm REGION...`", "Usage: votr state rm"}},
		{args: []string{"state", "rm", "two"}, code: 1, stderr: []string{`"two" is not a region id`}},
		{args: []string{"state", "rm", "2", "--state-dir", "/nonexistent-votr-state"}, code: 1, stderr: []string{"region 2 is not recorded"}},
		{args: []string{"destroy", "--skip-unreachable", "--take-over", "--bogus"}, code: 1, stderr: []string{"unknown flag --bogus"}},
		{args: []string{"version"}, code: 0, stdout: []string{"votr dev (go1."}},
		{args: []string{"version", "extra"}, code: 1, stderr: []string{"takes no arguments"}},
		{args: []string{"plan", "does-not-exist.yaml"}, code: 1, stderr: []string{"Error: the topology file has 1 problem(s)", "does-not-exist.yaml: no such file"}},
		{args: []string{"plan", "x.yaml", "--log-level", "loud"}, code: 1, stderr: []string{"VOTR_LOG_LEVEL (--log-level) is \"loud\""}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := votr(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// The commands end to end on a real server, with the password of the
// connect URL never in any output, flags after FILE, and the exit codes of
// SPEC §2.
func TestCommands(t *testing.T) {
	pg := pgtest.Start(t)
	dir := t.TempDir()
	// The managed test server's own password, given through ${VAR}.
	secret := strings.TrimPrefix(strings.SplitN(pg.URL(), "@", 2)[0], "postgresql://postgres:")
	t.Setenv("VOTR_TEST_PASSWORD", secret)
	topo := filepath.Join(dir, "topo.yaml")
	url := fmt.Sprintf("postgresql://postgres:${VOTR_TEST_PASSWORD}@127.0.0.1:%d/?sslmode=disable", pg.Port())
	writeTopology(t, topo, url, "drainDelay: 20s\n", 1)
	state := filepath.Join(dir, "state")
	var all strings.Builder
	step := func(want int, args ...string) (string, string) {
		t.Helper()
		code, stdout, stderr := votr(t, args...)
		all.WriteString(stdout + stderr)
		if code != want {
			t.Fatalf("votr %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, stdout, stderr)
		}
		return stdout, stderr
	}

	stdout, _ := step(2, "plan", topo, "--state-dir", state, "--detailed-exitcode")
	if !strings.Contains(stdout, "Plan: 10 to add, 0 to change, 0 to destroy.") {
		t.Errorf("plan:\n%s", stdout)
	}
	stdout, _ = step(0, "plan", topo, "--json", "--state-dir", state)
	var doc struct {
		Add     int `json:"add"`
		Actions []struct{ Kind, Target string }
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil || doc.Add != 10 || len(doc.Actions) != 10 {
		t.Errorf("plan --json: %v %+v\n%s", err, doc, stdout)
	}

	_, stderr := step(1, "apply", topo, "--no-run", "--state-dir", state)
	if !strings.Contains(stderr, "stdin is not a terminal: rerun with --auto-approve") {
		t.Errorf("apply without a terminal:\n%s", stderr)
	}
	step(0, "apply", topo, "--auto-approve", "--no-run", "--state-dir", state)
	stdout, _ = step(0, "plan", "--state-dir", state, topo, "--detailed-exitcode")
	if !strings.Contains(stdout, "No changes") {
		t.Errorf("plan after apply:\n%s", stdout)
	}
	stdout, _ = step(0, "check", topo, "--state-dir", state)
	if !strings.Contains(stdout, "converged") {
		t.Errorf("check:\n%s", stdout)
	}
	stdout, _ = step(0, "check", topo, "--json", "--state-dir", state)
	if !json.Valid([]byte(stdout)) {
		t.Errorf("check --json is not JSON:\n%s", stdout)
	}
	_, stderr = step(1, "sink", topo, "--feed", "7:0", "--state-dir", state)
	if !strings.Contains(stderr, `feed "7:0" is not in the topology`) {
		t.Errorf("sink with an unknown feed:\n%s", stderr)
	}

	stdout, _ = step(0, "apply", topo, "--auto-approve", "--duration", "2s", "--state-dir", state)
	for _, w := range []string{"No changes", "Workers committed", "converged: all 2 regions identical"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("apply --duration lacks %q:\n%s", w, stdout)
		}
	}

	// Without FILE: the recorded topology (and its password, from the
	// environment) is used.
	stdout, _ = step(0, "destroy", "--auto-approve", "--state-dir", state)
	if !strings.Contains(stdout, "Destroy complete!") {
		t.Errorf("destroy:\n%s", stdout)
	}
	stdout, _ = step(0, "destroy", "--auto-approve", "--state-dir", state, topo)
	if !strings.Contains(stdout, "Nothing to destroy") {
		t.Errorf("second destroy:\n%s", stdout)
	}
	if strings.Contains(all.String(), secret) {
		t.Errorf("the password was printed:\n%s", all.String())
	}
}

// TestMain lets a test run this test binary as the votr command (for
// killing it): with VOTR_TEST_RUN_MAIN=1 it is main.
func TestMain(m *testing.M) {
	if os.Getenv("VOTR_TEST_RUN_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// A votr apply killed with SIGKILL at random moments — during its first
// converge, while its sinks and workers run, while a spoke added to the
// file joins (created and backfilled), and after — leaves nothing that stops the
// next apply: the lock goes with the process, an interrupted converge is
// finished, the feeds resume from their checkpoints. The last apply
// converges, and every spoke's committed ballots are in every region
// exactly once (counted here with SQL, against the spoke's own database).
func TestKilledApplyResumes(t *testing.T) {
	pg := pgtest.Start(t)
	dir := t.TempDir()
	topo := filepath.Join(dir, "topo.yaml")
	url := pg.URL()
	writeTopo := func(spokes ...int) {
		writeTopology(t, topo, url, "drainDelay: 30s\nworkload:\n  interval: 10ms\n", spokes...)
	}
	writeTopo(1, 2)
	state := filepath.Join(dir, "state")
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("kill offsets from seed %d", seed)

	// kill starts an apply and SIGKILLs it once ready says so.
	kill := func(what string, ready func(out string, elapsed time.Duration) bool) string {
		cmd := exec.Command(os.Args[0], "apply", topo, "--auto-approve", "--duration", "5m", "--state-dir", state)
		cmd.Env = append(os.Environ(), "VOTR_TEST_RUN_MAIN=1")
		var out testlog.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for !ready(out.String(), time.Since(start)) {
			if time.Since(start) > time.Minute {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("%s: the apply never got there:\n%s", what, out.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		t.Logf("%s: killed after %s; its last line: %s", what, time.Since(start).Round(time.Millisecond), lines[len(lines)-1])
		return out.String()
	}

	// 1: during the first converge, some actions in.
	after := 1 + rng.IntN(10)
	out := kill(fmt.Sprintf("kill 1 (after %d actions)", after), func(out string, _ time.Duration) bool {
		return strings.Count(out, ": created (") >= after
	})
	if strings.Contains(out, "Apply complete!") {
		t.Errorf("kill 1 came after the converge:\n%s", out)
	}
	// 2: at a random moment 1-4 s in: converging what kill 1 left, or running.
	d := time.Second + time.Duration(rng.Int64N(int64(3*time.Second)))
	kill("kill 2 ("+d.String()+" in)", func(_ string, el time.Duration) bool { return el >= d })
	// 3: spoke 3 joins a hub that has ballots (7 actions: database, schema,
	// seed, feed 3:0's slot and checkpoint, feed 0:3's slot with its
	// exported snapshot and the backfill); killed after 1 to 6 of them.
	writeTopo(1, 2, 3)
	after = 1 + rng.IntN(6)
	kill(fmt.Sprintf("kill 3 (spoke 3 joining, after %d actions)", after), func(out string, _ time.Duration) bool {
		return strings.Count(out, ": created (") >= after
	})
	// 4: 1-4 s in: finishing spoke 3's converge, or running.
	d = time.Second + time.Duration(rng.Int64N(int64(3*time.Second)))
	kill("kill 4 ("+d.String()+" in)", func(_ string, el time.Duration) bool { return el >= d })

	code, stdout, stderr := votr(t, "apply", topo, "--auto-approve", "--duration", "2s", "--state-dir", state)
	if code != 0 || !strings.Contains(stdout, "converged: all 4 regions identical") {
		t.Fatalf("apply after the kills: exit %d\n%s\n%s", code, stdout, stderr)
	}
	dbs := []string{"votr_0", "votr_1", "votr_2", "votr_3"}
	for _, src := range []int{1, 2, 3} {
		own := pgtest.QueryInt(t, pg.DSN(fmt.Sprintf("votr_%d", src)), `SELECT count(*) FROM ballots WHERE src = $1`, src)
		if own == 0 {
			t.Errorf("spoke %d committed no ballot", src)
		}
		for _, db := range dbs {
			if n := pgtest.QueryInt(t, pg.DSN(db), `SELECT count(*) FROM ballots WHERE src = $1`, src); n != own {
				t.Errorf("%s holds %d of spoke %d's ballots, spoke %d has %d", db, n, src, src, own)
			}
		}
	}
	for _, db := range dbs {
		if n := pgtest.QueryInt(t, pg.DSN(db), `SELECT count(*) FROM totals t
			LEFT JOIN (SELECT candidate, count(*) n FROM ballots GROUP BY candidate) b USING (candidate)
			WHERE t.total <> coalesce(b.n, 0)`); n != 0 {
			t.Errorf("%s: the invariant fails for %d candidates", db, n)
		}
	}
	if code, _, stderr := votr(t, "destroy", "--auto-approve", "--state-dir", state); code != 0 {
		t.Fatalf("destroy: %s", stderr)
	}
}

// ^C once: the workers stop, the feeds drain, the report is printed and
// the exit code says whether it holds. ^C twice: everything stops at once.
func TestInterrupts(t *testing.T) {
	pg := pgtest.Start(t)
	dir := t.TempDir()
	topo := filepath.Join(dir, "topo.yaml")
	url := pg.URL()
	writeTopology(t, topo, url, "drainDelay: 30s\nworkload:\n  interval: 10ms\n", 1)
	state := filepath.Join(dir, "state")
	start := func() (*exec.Cmd, *testlog.Buffer) {
		cmd := exec.Command(os.Args[0], "apply", topo, "--auto-approve", "--state-dir", state)
		cmd.Env = append(os.Environ(), "VOTR_TEST_RUN_MAIN=1")
		out := &testlog.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(out.String(), "casting ballots") {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("the apply did not start its workers:\n%s", out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Second)
		return cmd, out
	}
	exitCode := func(cmd *exec.Cmd) int {
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	}

	cmd, out := start()
	cmd.Process.Signal(os.Interrupt)
	if code := exitCode(cmd); code != 0 || !strings.Contains(out.String(), "converged: all 2 regions identical") {
		t.Errorf("one interrupt: exit %d\n%s", code, out.String())
	}

	cmd, out = start()
	cmd.Process.Signal(os.Interrupt)
	// Two signals sent back to back may reach the process as one (pending
	// signals of one kind coalesce): the second goes once the first is seen.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "votr: stopping") && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(os.Interrupt)
	if code := exitCode(cmd); code != 1 || !strings.Contains(out.String(), "stopped at once") {
		t.Errorf("two interrupts: exit %d\n%s", code, out.String())
	}
	// Whatever was cut short, the next apply converges.
	code, stdout, stderr := votr(t, "apply", topo, "--auto-approve", "--duration", "1s", "--state-dir", state)
	if code != 0 || !strings.Contains(stdout, "converged") {
		t.Errorf("apply after two interrupts: exit %d\n%s\n%s", code, stdout, stderr)
	}

	// SIGHUP: the running apply takes the edited file (spoke 2 joins).
	cmd, out = start()
	writeTopology(t, topo, url, "drainDelay: 30s\nworkload:\n  interval: 10ms\n", 1, 2)
	cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(time.Minute); !strings.Contains(out.String(), "Reload complete") && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt)
	if code := exitCode(cmd); code != 0 || !strings.Contains(out.String(), "+ database votr_2") || !strings.Contains(out.String(), "converged: all 3 regions identical") {
		t.Errorf("SIGHUP with spoke 2 added: exit %d\n%s", code, out.String())
	}
}

// writeTopology writes to path a topology of a hub and the given spokes,
// all on url, with 8 candidates and the project's merge script; rest (more
// top-level keys) is appended.
func writeTopology(t testing.TB, path, url, rest string, spokes ...int) {
	t.Helper()
	script, err := filepath.Abs("../../scripts/votr.ts")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "hub:\n  connect: %s\nspokes:\n", url)
	for _, id := range spokes {
		fmt.Fprintf(&b, "  - id: %d\n    connect: %s\n", id, url)
	}
	fmt.Fprintf(&b, "candidates: 8\nscript: %s\n%s", script, rest)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
