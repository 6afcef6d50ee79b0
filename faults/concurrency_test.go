package faults_test

import (
	"github.com/votr-dev/votr/internal/pgtest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Two applies of one topology: the second fails naming the first, whether
// it shares the state dir (the apply lock) or not (the feeds' replication
// slots are in use). destroy while sinks run refuses, naming the process
// that holds each slot, and removes nothing; once the sinks stop it works.
func TestConcurrentCommands(t *testing.T) {
	srv := startServers(t, 1)[0]
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	topoPath := topo{hub: connURL(srv), spokes: []spoke{{id: 1, connect: connURL(srv)}}, candidates: 8, drainDelay: "20s",
		extra: "workload:\n  interval: 50ms\n"}.write(t, dir)

	first := startVotr(t, dir, nil, "apply", topoPath, "--auto-approve", "--duration", "2m", "--state-dir", state)
	first.waitOutput(t, "casting ballots", time.Minute)
	pid := first.cmd.Process.Pid

	res := votr(t, dir, nil, time.Minute, "apply", topoPath, "--auto-approve", "--duration", "5s", "--state-dir", state)
	if res.code != 1 || !strings.Contains(res.stderr, "another votr apply") || !strings.Contains(res.stderr, "pid "+itoa(pid)) {
		t.Errorf("second apply with the same state dir: want exit 1 naming pid %d\n%s", pid, res)
	}
	other := filepath.Join(dir, "other-state")
	res = votr(t, dir, nil, time.Minute, "apply", topoPath, "--auto-approve", "--duration", "5s", "--state-dir", other)
	// Another state dir is another deployment: refused before anything
	// changes or any worker starts (the sinks' holder check runs with the
	// first state dir below).
	if res.code != 1 || !strings.Contains(res.stderr, "apply refused, nothing was changed") ||
		!strings.Contains(res.stderr, "belongs to votr deployment") || strings.Contains(res.stderr, "casting ballots") {
		t.Errorf("second apply with another state dir: want exit 1 refusing another deployment's databases, before any worker starts\n%s", res)
	}
	t.Logf("second apply with another state dir:\n%s", res.stderr)
	res = votr(t, dir, nil, time.Minute, "destroy", topoPath, "--auto-approve", "--state-dir", other)
	if res.code != 1 || !strings.Contains(res.stderr, "destroy refused, nothing was removed") || !strings.Contains(res.stderr, "belongs to votr deployment") {
		t.Errorf("destroy from another state dir while apply's sinks run: want a refusal naming the owner\n%s", res)
	}
	if code := first.stop(t, time.Minute); code != 0 {
		t.Fatalf("first apply, stopped with SIGTERM: exit %d\n%s", code, first.out)
	}

	// Sinks in their own processes hold the slots; destroy refuses.
	sink := startVotr(t, dir, nil, "sink", topoPath, "--feed", "1:0", "--state-dir", state)
	sink.waitOutput(t, "sink running", time.Minute)
	waitFor(t, 30*time.Second, "the sink to hold its slot", func() bool {
		return pgtestInt(t, srv.DSN("postgres"), `SELECT count(*) FROM pg_replication_slots WHERE active`) == 1
	})
	res = votr(t, dir, nil, time.Minute, "destroy", topoPath, "--auto-approve", "--state-dir", state)
	if res.code != 1 || !strings.Contains(res.stderr, "replication slot votr_1_to_0") || !strings.Contains(res.stderr, "stop that sink") {
		t.Errorf("destroy while a sink runs: want a refusal naming the slot and its holder\n%s", res)
	}
	if got := pgtest.Query(t, srv.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname LIKE 'votr_%'`); len(got) != 2 {
		t.Errorf("the refused destroy removed databases: %v left", got)
	}
	if code := sink.stop(t, 30*time.Second); code != 0 {
		t.Errorf("sink, stopped with SIGTERM: exit %d\n%s", code, sink.out)
	}
	if res := votr(t, dir, nil, time.Minute, "destroy", "--auto-approve", "--state-dir", state); res.code != 0 {
		t.Fatalf("destroy once the sinks stopped: %s", res)
	}
	if left := votrLeftovers(t, srv); left != "" {
		t.Errorf("destroy left %s", left)
	}
}
