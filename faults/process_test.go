package faults_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/localpg"
)

// bigRows is the size of the large source transactions.
const bigRows = 100000

// bigTransaction casts bigRows ballots for one candidate in one transaction
// on a region, as any SQL client could (the triggers stamp the clocks).
func bigTransaction(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var c string
		if err := tx.QueryRow(ctx, `SELECT candidate::text FROM candidates ORDER BY candidate LIMIT 1`).Scan(&c); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE totals SET total = total + $1 WHERE candidate = $2`, bigRows, c); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO ballots (candidate) SELECT $1::uuid FROM generate_series(1, $2::int)`, c, bigRows)
		return err
	})
}

// waitLongApply waits until a sink holds a target transaction open on the
// hub for a while: the large transaction is being applied.
func waitLongApply(t *testing.T, hub *localpg.Server, p *process) {
	t.Helper()
	waitFor(t, time.Minute, "a sink applying the large transaction to the hub", func() bool {
		return pgtestInt(t, hub.DSN("votr_0"), `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'votr-sink' AND backend_xid IS NOT NULL AND now() - xact_start > interval '300 ms'`) > 0
	})
	if p != nil {
		select {
		case <-p.done:
			t.Fatalf("votr exited before it was killed:\n%s", p.out)
		default:
		}
	}
}

// fromSpoke counts the ballots of spoke id in a region.
func fromSpoke(t *testing.T, dsn string, id int) int64 {
	return pgtestInt(t, dsn, `SELECT count(*) FROM ballots WHERE src = $1`, id)
}

// SIGKILL of `votr apply` while its sink applies a 200k-row source
// transaction, then SIGKILL of a separate `votr sink --feed` process doing
// the same: each time the target transaction is lost with the process, the
// feed resumes from its checkpoint when run again, and every region ends
// with every ballot exactly once.
func TestKilledDuringLargeTransaction(t *testing.T) {
	ctx := ctxT(t, 4*time.Minute)
	srv := startServers(t, 1)[0]
	dir := t.TempDir()
	topoPath := topo{hub: connURL(srv), spokes: []spoke{{id: 1, connect: connURL(srv)}, {id: 2, connect: connURL(srv)}},
		extra: "workload:\n  interval: 20ms\n"}.write(t, dir)
	state := filepath.Join(dir, "state")
	regions := []regionDB{{"hub", srv.DSN("votr_0")}, {"spoke 1", srv.DSN("votr_1")}, {"spoke 2", srv.DSN("votr_2")}}
	began := time.Now()
	step := func(what string) { t.Logf("%5.1fs: %s", time.Since(began).Seconds(), what) }

	// 1. votr apply is killed while it applies spoke 1's large transaction.
	apply := startVotr(t, dir, nil, "apply", topoPath, "--auto-approve", "--duration", "5m", "--state-dir", state)
	apply.waitOutput(t, "casting ballots", time.Minute)
	step("workers running; large transaction on spoke 1")
	if err := bigTransaction(ctx, srv.DSN("votr_1")); err != nil {
		t.Fatalf("large transaction on spoke 1: %v", err)
	}
	step("committed")
	waitLongApply(t, srv, apply)
	apply.kill(t)
	atKill, own := fromSpoke(t, srv.DSN("votr_0"), 1), fromSpoke(t, srv.DSN("votr_1"), 1)
	if own-atKill < bigRows/2 {
		t.Errorf("the hub already held %d of spoke 1's %d ballots when apply was killed: the kill did not hit the large transaction", atKill, own)
	}
	t.Logf("apply killed with the hub holding %d of spoke 1's %d ballots", atKill, own)

	// 2. The sinks now run as separate processes. Spoke 2 commits a large
	// transaction, apply runs again (workers only, --no-sinks), and the
	// sink of feed 2:0 is killed while it applies that transaction, then
	// started again.
	sinks := map[string]*process{}
	defer func() {
		if t.Failed() {
			for f, p := range sinks {
				t.Logf("votr sink --feed %s:\n%s", f, p.out)
			}
		}
	}()
	for _, f := range []string{"1:0", "0:1", "0:2"} {
		sinks[f] = startVotr(t, dir, nil, "sink", topoPath, "--feed", f, "--state-dir", state)
	}
	step("sinks started")
	waitFor(t, time.Minute, "spoke 1's large transaction at the hub", func() bool {
		return fromSpoke(t, srv.DSN("votr_0"), 1) >= own
	})
	step("spoke 1 at the hub; large transaction on spoke 2")
	if err := bigTransaction(ctx, srv.DSN("votr_2")); err != nil {
		t.Fatalf("large transaction on spoke 2: %v", err)
	}
	apply = startVotr(t, dir, nil, "apply", topoPath, "--auto-approve", "--no-sinks", "--duration", "8s", "--state-dir", state)
	apply.waitOutput(t, "casting ballots", time.Minute)
	sinks["2:0"] = startVotr(t, dir, nil, "sink", topoPath, "--feed", "2:0", "--state-dir", state)
	step("apply and sink 2:0 started")
	waitLongApply(t, srv, sinks["2:0"])
	sinks["2:0"].kill(t)
	atKill, own = fromSpoke(t, srv.DSN("votr_0"), 2), fromSpoke(t, srv.DSN("votr_2"), 2)
	if own-atKill < bigRows/2 {
		t.Errorf("the hub already held %d of spoke 2's %d ballots when the sink was killed", atKill, own)
	}
	t.Logf("sink 2:0 killed with the hub holding %d of spoke 2's %d ballots", atKill, own)
	sinks["2:0"] = startVotr(t, dir, nil, "sink", topoPath, "--feed", "2:0", "--state-dir", state)

	step("sink 2:0 restarted")
	select {
	case <-apply.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("apply --no-sinks did not end:\n%s", apply.out)
	}
	if apply.err != nil || !strings.Contains(apply.out.String(), "converged: all 3 regions identical") {
		t.Fatalf("apply after the kills: %v\n%s", apply.err, apply.out)
	}
	for f, p := range sinks {
		if code := p.stop(t, 30*time.Second); code != 0 {
			t.Errorf("votr sink --feed %s exited %d on SIGTERM:\n%s", f, code, p.out)
		}
	}
	step("apply done; sinks stopped")
	if res := votr(t, dir, nil, time.Minute, "check", topoPath, "--state-dir", state); res.code != 0 {
		t.Fatalf("check: %s", res)
	}
	step("checked")
	// Every spoke's ballots (workers' and the large transactions') are in
	// every region exactly once.
	committed := map[int]int64{}
	for id := 1; id <= 2; id++ {
		committed[id] = fromSpoke(t, regions[id].dsn, id)
		if committed[id] < bigRows {
			t.Errorf("spoke %d holds only %d ballots of its own", id, committed[id])
		}
	}
	assertConverged(t, regions, committed)
	step("asserted")
	if n := pgtestInt(t, srv.DSN("votr_0"), `SELECT count(*) FROM votr.dead_letters`); n != 0 {
		t.Errorf("%d dead letters at the hub", n)
	}
}

// SIGKILL of `votr apply` (alone, leaving its children orphans, or with its
// whole process group) at points of creating and starting its managed
// server: the next `votr plan`, `votr apply` and `votr destroy` all work,
// and nothing is left running or on disk.
func TestKilledDuringServerCreation(t *testing.T) {
	points := []struct {
		name string
		seen func(srvDir string) bool
	}{
		{"initdb running", func(srvDir string) bool { return pgtest.CommandUnder(filepath.Join(srvDir, "data.new"), "initdb") }},
		{"postmaster starting", func(srvDir string) bool {
			_, err := os.Stat(filepath.Join(srvDir, "data", "postmaster.pid"))
			return err == nil
		}},
	}
	for _, p := range points {
		for _, group := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/kill group %v", p.name, group), func(t *testing.T) {
				dir := t.TempDir()
				// The server runs as user postgres, which must reach its
				// directory through the 0700 parent Go makes per test.
				if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
					t.Fatal(err)
				}
				state := filepath.Join(dir, "state")
				srvDir := filepath.Join(state, "servers", "default")
				t.Cleanup(func() { _ = localpg.New(localpg.Options{Dir: srvDir}).Destroy(context.Background()) })
				topoPath := topo{hub: "local", spokes: []spoke{{id: 1, connect: "local"}}, candidates: 8}.write(t, dir)

				cmd := exec.Command(votrBin, "apply", topoPath, "--auto-approve", "--no-run", "--state-dir", state)
				cmd.Dir, cmd.Env = dir, cleanEnv()
				cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
				out := &testlog.Buffer{}
				cmd.Stdout, cmd.Stderr = out, out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				exited := make(chan struct{})
				go func() { _ = cmd.Wait(); close(exited) }()
				waitFor(t, 2*time.Minute, p.name, func() bool {
					select {
					case <-exited:
						t.Fatalf("apply ended before %q was seen:\n%s", p.name, out)
					default:
					}
					return p.seen(srvDir)
				})
				if group {
					_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				} else {
					_ = cmd.Process.Kill()
				}
				<-exited
				if strings.Contains(out.String(), "Apply complete!") {
					t.Fatalf("apply finished before it was killed:\n%s", out)
				}

				if res := votr(t, dir, nil, 2*time.Minute, "plan", topoPath, "--state-dir", state); res.code != 0 || !strings.Contains(res.stdout, "Plan: ") {
					t.Fatalf("plan after the kill: %s", res)
				}
				if res := votr(t, dir, nil, 3*time.Minute, "apply", topoPath, "--auto-approve", "--no-run", "--state-dir", state); res.code != 0 || !strings.Contains(res.stdout, "Apply complete!") {
					t.Fatalf("apply after the kill: %s", res)
				}
				if res := votr(t, dir, nil, 2*time.Minute, "plan", topoPath, "--state-dir", state, "--detailed-exitcode"); res.code != 0 {
					t.Errorf("plan after the second apply is not empty: %s", res)
				}
				if res := votr(t, dir, nil, 2*time.Minute, "destroy", topoPath, "--auto-approve", "--state-dir", state); res.code != 0 || !strings.Contains(res.stdout, "Destroy complete!") {
					t.Fatalf("destroy after the kill: %s", res)
				}
				if pids := localpg.New(localpg.Options{Dir: srvDir}).Processes(); len(pids) > 0 {
					t.Errorf("processes left under %s: %v", srvDir, pids)
				}
				if _, err := os.Stat(state); !os.IsNotExist(err) {
					t.Errorf("state dir left after destroy: %v", err)
				}
			})
		}
	}
}
