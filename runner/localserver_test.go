package runner

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/localpg"
	planpkg "github.com/votr-dev/votr/plan"
)

// TestLocalServerSecretAndLostData: the managed server's generated password
// never reaches votr's output, logs, plan JSON or state file; and a data
// directory deleted outside votr is named in the plan (its databases are
// lost), after which apply makes a new server.
func TestLocalServerSecretAndLostData(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	dir := serverDir(t)
	stateDir := filepath.Join(dir, "state")
	topo := topology(t, dir, 8, region{connect: "local"}, region{id: 1, connect: "local"})
	out := &testlog.Buffer{}
	r := newRunner(t, stateDir, out)
	t.Cleanup(func() { _, _ = newRunner(t, stateDir, &testlog.Buffer{}).Destroy(context.Background(), nil) })
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	data := filepath.Join(stateDir, "servers", "default", "data")
	secretOf := func() string {
		b, err := os.ReadFile(filepath.Join(data, "votr.secret"))
		if err != nil || len(strings.TrimSpace(string(b))) < 32 {
			t.Fatalf("managed server's secret: %q, %v", b, err)
		}
		return strings.TrimSpace(string(b))
	}
	secrets := []string{secretOf()}

	if err := os.RemoveAll(data); err != nil {
		t.Fatal(err)
	}
	plan, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatalf("plan with the data directory deleted: %v\n%s", err, out)
	}
	if len(plan.Actions) == 0 || plan.Actions[0].Kind != planpkg.KindServer || !strings.Contains(plan.Actions[0].Detail, "deleted outside votr: the databases recorded there are lost") {
		t.Errorf("plan does not say the server's data is lost:\n%s", strings.Join(planLines(plan), "\n"))
	}
	planJSON := mustJSON(t, plan)
	if !strings.Contains(planJSON, `"dataLost":true`) {
		t.Errorf("plan JSON lacks dataLost")
	}
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply after the data directory was deleted: %v\n%s", err, out)
	}
	secrets = append(secrets, secretOf())
	state, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		for what, text := range map[string]string{"output and logs": out.String(), "plan JSON": planJSON, "state file": string(state)} {
			if strings.Contains(text, s) {
				t.Errorf("the managed server's password appears in the %s", what)
			}
		}
	}
}

// appliedThenStopped is how the tests of a managed server's life begin: a
// hub and spoke 1 on the managed local server, applied, then the server
// stopped (its directory is STATE_DIR/servers/default). The server is
// destroyed when the test ends.
func appliedThenStopped(t *testing.T) (context.Context, *localpg.Server, *Runner, *config.Topology, *testlog.Buffer) {
	t.Helper()
	t.Parallel()
	ctx := ctxT(t)
	dir := serverDir(t)
	stateDir := filepath.Join(dir, "state")
	srvDir := filepath.Join(stateDir, "servers", "default")
	topo := topology(t, dir, 8, region{connect: "local"}, region{id: 1, connect: "local"})
	out := &testlog.Buffer{}
	r := newRunner(t, stateDir, out)
	t.Cleanup(func() { _ = localpg.New(localpg.Options{Dir: srvDir}).Destroy(context.Background()) })
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	srv := localpg.New(localpg.Options{Dir: srvDir})
	if err := srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx, srv, r, topo, out
}

// TestLocalServerHalfMade: what an interrupted creation or destroy, or an
// older votr, leaves (a cluster whose postgresql.conf lacks votr's
// settings, a leftover data.new, a data directory without PG_VERSION) does
// not stop plan, apply or destroy, and destroy leaves no process behind.
func TestLocalServerHalfMade(t *testing.T) {
	ctx, srv, r, topo, out := appliedThenStopped(t)
	stateDir, srvDir := filepath.Dir(filepath.Dir(srv.Dir())), srv.Dir()
	// Created by an older votr that was killed before it added the include.
	conf := filepath.Join(srvDir, "data", "postgresql.conf")
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(strings.ReplaceAll(string(b), "include 'votr.conf'", "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Plan(ctx, topo); err != nil {
		t.Fatalf("plan over a cluster without votr's settings: %v\n%s", err, out)
	}
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply over a cluster without votr's settings: %v\n%s", err, out)
	}
	if _, err := newRunner(t, stateDir, out).Destroy(ctx, nil); err != nil {
		t.Fatalf("destroy: %v\n%s", err, out)
	}
	if pids := srv.Processes(); len(pids) > 0 || srv.Exists() {
		t.Fatalf("destroy left processes %v (or the data: %v)", pids, srv.Exists())
	}

	// A creation killed before its cluster was moved into place.
	if err := os.MkdirAll(filepath.Join(srvDir, "data.new", "base"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(srvDir, "data.new", "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply over a half-made cluster: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(srvDir, "data.new")); !os.IsNotExist(err) {
		t.Errorf("data.new still there: %v", err)
	}
	if _, err := newRunner(t, stateDir, out).Destroy(ctx, nil); err != nil {
		t.Fatalf("destroy: %v\n%s", err, out)
	}
	if pids := srv.Processes(); len(pids) > 0 {
		t.Fatalf("destroy left processes %v", pids)
	}

	// A destroy killed while it removed the data directory, after
	// PG_VERSION went: destroy again removes the rest (it is no cluster),
	// and apply then makes a new one.
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if err := srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(srvDir, "data", "PG_VERSION")); err != nil {
		t.Fatal(err)
	}
	if _, err := newRunner(t, stateDir, out).Destroy(ctx, nil); err != nil {
		t.Fatalf("destroy after an interrupted one: %v\n%s", err, out)
	}
	if _, err := os.Stat(srvDir); !os.IsNotExist(err) {
		t.Fatalf("destroy left the server's directory %s: %v", srvDir, err)
	}
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply after the destroy: %v\n%s", err, out)
	}
	if _, err := newRunner(t, stateDir, out).Destroy(ctx, nil); err != nil {
		t.Fatalf("destroy: %v\n%s", err, out)
	}
}

// TestReadOnlyCommandsKeepPort: while a managed server is stopped, another
// program takes its recorded port. check refuses, saying what is wrong and
// how to fix it; plan says apply would move the server and why; neither
// starts the server, moves its port or rewrites its settings or the state.
// apply then starts it on a new free port. A running server is only read
// by plan and check (same postmaster, same files); a stopped one is not
// read by plan, whose notes say so, and apply finds what changed meanwhile.
// check works again once apply moved the server, and leaves it stopped.
func TestReadOnlyCommandsKeepPort(t *testing.T) {
	ctx, srv, r, topo, out := appliedThenStopped(t)
	stateDir, srvDir := filepath.Dir(filepath.Dir(srv.Dir())), srv.Dir()
	old := srv.Port()
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(old))
	if err != nil {
		t.Fatalf("occupy port %d: %v", old, err)
	}
	defer l.Close()

	// What a read-only command must leave as it is.
	files := []string{filepath.Join(srvDir, "port"), filepath.Join(srvDir, "data", "votr.conf"),
		filepath.Join(srvDir, "data", "postgresql.conf"), filepath.Join(srvDir, "data", "postgresql.auto.conf"),
		filepath.Join(stateDir, "state.json")}
	snapshot := func() map[string]string {
		m := map[string]string{}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			m[f] = string(b)
		}
		return m
	}
	before := snapshot()
	unchanged := func(cmd string) {
		t.Helper()
		for f, b := range snapshot() {
			if b != before[f] {
				t.Errorf("%s changed %s:\nbefore: %q\nafter:  %q", cmd, f, before[f], b)
			}
		}
		if pids := srv.Processes(); len(pids) > 0 {
			t.Errorf("%s left server processes %v", cmd, pids)
		}
	}

	_, err = r.Check(ctx, topo)
	wantCheck := fmt.Sprintf("managed server local:default is stopped and its port %d is now used by another program; a read-only command does not move a server, so nothing was started or changed. "+
		"Stop the program listening on port %d and run this command again, or run `votr apply %s`, which starts the server on a new free port and records it", old, old, topo.Path)
	if err == nil || err.Error() != wantCheck {
		t.Errorf("check with the port taken:\n got: %v\nwant: %s", err, wantCheck)
	}
	unchanged("check")

	p, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatalf("plan with the port taken: %v\n%s", err, out)
	}
	if got := planLines(p); !slices.Equal(got, []string{"~ server local:default"}) {
		t.Errorf("plan with the port taken: %v", got)
	}
	if want := fmt.Sprintf("start the stopped server on a new free port (its port %d is now used by another program)", old); len(p.Actions) == 0 || p.Actions[0].Detail != want {
		t.Errorf("plan's server action does not say it moves the port:\n got: %+v\nwant detail: %s", p.Actions, want)
	}
	wantNote := fmt.Sprintf("server local:default was recorded on port %d, which another program now listens on; plan does not move a server. To keep port %d, stop that program before apply; otherwise apply starts the server on a new free port and records it", old, old)
	if notes := strings.Join(p.Notes, "\n"); !strings.Contains(notes, wantNote) {
		t.Errorf("plan notes lack %q:\n%s", wantNote, notes)
	}
	if j := mustJSON(t, p); !strings.Contains(j, fmt.Sprintf(`"portTaken":%d`, old)) {
		t.Errorf("plan JSON lacks portTaken %d", old)
	}
	unchanged("plan")

	// apply may move it.
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply with the port taken: %v\n%s", err, out)
	}
	moved := srv.Port()
	if moved == old || !srv.Running(ctx) {
		t.Fatalf("apply: server on port %d (running %v), old port %d", moved, srv.Running(ctx), old)
	}
	if b, _ := os.ReadFile(filepath.Join(srvDir, "port")); strings.TrimSpace(string(b)) != strconv.Itoa(moved) {
		t.Errorf("port file %q after apply, server on %d", b, moved)
	}

	// A running server is only read: same postmaster, same files.
	before = snapshot()
	pidFile := filepath.Join(srvDir, "data", "postmaster.pid")
	pm, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := r.Plan(ctx, topo); err != nil || !p.Empty() {
		t.Fatalf("plan of the running server: %v %v", err, planLines(p))
	}
	if _, err := r.Check(ctx, topo); err != nil {
		t.Fatalf("check of the running server: %v\n%s", err, out)
	}
	unchangedRunning := func(cmd string) {
		t.Helper()
		for f, b := range snapshot() {
			if b != before[f] {
				t.Errorf("%s changed %s:\nbefore: %q\nafter:  %q", cmd, f, before[f], b)
			}
		}
		if now, _ := os.ReadFile(pidFile); string(now) != string(pm) || !srv.Running(ctx) {
			t.Errorf("%s restarted or stopped the running server: postmaster.pid was\n%s\nnow\n%s", cmd, pm, now)
		}
	}
	unchangedRunning("plan and check")

	// A stopped server is not read by plan, and plan says so; apply reads
	// it and repairs what changed meanwhile (a trigger dropped while votr
	// was not looking).
	pgtest.Exec(t, srv.DSN("votr_1"), `DROP TRIGGER votr_stamp ON totals`)
	if err := srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	p, err = r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	if got := planLines(p); !slices.Equal(got, []string{"~ server local:default"}) {
		t.Errorf("plan of the stopped server: %v", got)
	}
	wantNote = "server local:default is stopped and plan leaves it so: its regions (0, 1) are planned from the recorded state, not read (their databases, schema and slots may have changed since), so this plan may be incomplete; apply starts the server, inspects it and shows its own plan before changing anything"
	if notes := strings.Join(p.Notes, "\n"); !strings.Contains(notes, wantNote) {
		t.Errorf("plan of the stopped server does not say it did not read it:\n%s", notes)
	}
	res, err := r.Apply(ctx, topo, nil)
	if err != nil {
		t.Fatalf("apply of the stopped server: %v\n%s", err, out)
	}
	if got := planLines(res.Plan); !slices.Contains(got, "~ schema votr_1 on local:default") {
		t.Errorf("apply did not find the trigger dropped while the server was stopped: %v", got)
	}

	if err := srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Check(ctx, topo)
	if err != nil {
		t.Fatalf("check after apply moved the server: %v\n%s", err, out)
	}
	if !rep.OK() {
		t.Errorf("check after apply moved the server: %v", rep.Problems())
	}
	if srv.Running(ctx) || srv.Port() != moved {
		t.Errorf("check left the server running (%v) or moved it (port %d, want %d)", srv.Running(ctx), srv.Port(), moved)
	}
}

// A managed server that a read-only command started to read is stopped
// again only if nobody else uses it by then: an apply reloaded to run a
// spoke there, or a sink, may have connected meanwhile.
func TestReadLeavesAServerInUseRunning(t *testing.T) {
	ctx, srv, r, topo, out := appliedThenStopped(t)
	stop, err := r.startToRead(ctx, topo)
	if err != nil {
		t.Fatalf("start to read: %v\n%s", err, out)
	}
	other, err := pgx.Connect(ctx, srv.DSN("votr_1"))
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if !srv.Running(ctx) {
		t.Fatalf("the server was stopped under another session")
	}
	if !strings.Contains(out.String(), "left running: other sessions use it now") {
		t.Errorf("the log does not say why the server stays up:\n%s", out)
	}
	other.Close(ctx)
	stop, err = r.startToRead(ctx, topo) // running: nothing to start, nothing to stop
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if !srv.Running(ctx) {
		t.Errorf("a server the read did not start was stopped")
	}
}
