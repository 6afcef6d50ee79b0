package faults_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/schema"
)

// holdSlot streams slot from the test itself under application_name name,
// reading nothing: to the server it is a walsender holding the slot, the
// way one serving a SIGKILLed sink looks until the server notices. It
// returns the walsender's pid.
func holdSlot(t *testing.T, dsn, slot, name string) (*pgconn.PgConn, int) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = name
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctxT(t, 10*time.Second)) })
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + schema.Publication + "'"}})
	if err != nil {
		t.Fatalf("hold slot %s: %v", slot, err)
	}
	return conn, int(conn.PID())
}

// deadPID is the process id of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// A replication slot still held by the walsender of a killed sink of this
// deployment (its application_name names the deployment and a process that
// is gone) is taken back: `votr sink` ends that walsender, saying so, and
// streams. A holder whose process is alive, or of another deployment, is
// another process's feed: sink refuses as before.
func TestStaleWalsenderEnded(t *testing.T) {
	srv := startServers(t, 1)[0]
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	path := topo{hub: connURL(srv), spokes: []spoke{{id: 1, connect: connURL(srv)}}}.write(t, dir)
	if res := votr(t, dir, nil, 3*time.Minute, "apply", path, "--auto-approve", "--no-run", "--state-dir", state); res.code != 0 {
		t.Fatalf("apply --no-run: %s", res)
	}
	var st struct{ Deployment string }
	if err := json.Unmarshal(mustReadBytes(t, filepath.Join(state, "state.json")), &st); err != nil || st.Deployment == "" {
		t.Fatalf("state.json: deployment %q, %v", st.Deployment, err)
	}
	spoke := srv.DSN("votr_1")
	const slot = "votr_1_to_0"
	activePID := func() int64 {
		return pgtestInt(t, srv.DSN("postgres"), `SELECT coalesce(max(active_pid), 0) FROM pg_replication_slots WHERE slot_name = $1`, slot)
	}

	for _, tc := range []struct {
		name  string
		app   string
		ended bool
	}{
		{"this deployment, process gone", fmt.Sprintf("votr-sink %s pid %d", st.Deployment, deadPID(t)), true},
		{"this deployment, process alive", fmt.Sprintf("votr-sink %s pid %d", st.Deployment, os.Getpid()), false},
		{"another deployment, process gone", fmt.Sprintf("votr-sink 0123456789ab pid %d", deadPID(t)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The walsender of the case before exits on its own time once
			// its connection is closed: until then it holds the slot.
			waitFor(t, 2*time.Minute, "the slot to be released by the case before", func() bool { return activePID() == 0 })
			conn, wpid := holdSlot(t, spoke, slot, tc.app)
			defer conn.Close(ctxT(t, 10*time.Second))
			if got := activePID(); got != int64(wpid) {
				t.Fatalf("slot %s is held by pid %d, want the test's walsender %d", slot, got, wpid)
			}
			p := startVotr(t, dir, nil, "sink", path, "--feed", "1:0", "--state-dir", state)
			if !tc.ended {
				<-p.done
				if out := p.out.String(); p.err == nil || !strings.Contains(out, "already runs elsewhere") {
					t.Fatalf("sink with the slot held by %q: %v\n%s", tc.app, p.err, out)
				}
				if got := activePID(); got != int64(wpid) {
					t.Errorf("the walsender of %q was ended (slot now held by %d)", tc.app, got)
				}
				return
			}
			p.waitOutput(t, "ending a replication connection left behind by a killed process of this deployment", 2*time.Minute)
			waitFor(t, 2*time.Minute, "the sink to stream the slot", func() bool {
				got := activePID()
				return got != 0 && got != int64(wpid)
			})
			if n := pgtestInt(t, srv.DSN("postgres"), `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, wpid); n != 0 {
				t.Errorf("the stale walsender %d still runs", wpid)
			}
			if code := p.stop(t, time.Minute); code != 0 {
				t.Errorf("sink exit %d after SIGTERM:\n%s", code, p.out)
			}
		})
	}
}

func mustReadBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
