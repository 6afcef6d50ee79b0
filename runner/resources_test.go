package runner

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/localpg"
	planpkg "github.com/votr-dev/votr/plan"
)

// The whole life cycle on a managed local server: plan on nothing, apply,
// plan again (no changes), apply again (nothing executed), a stopped server,
// destroy (nothing left, the server's data gone).
func TestLifecycleLocal(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	dir := serverDir(t)
	stateDir := filepath.Join(dir, "state")
	topo := topology(t, dir, 8, region{connect: "local"}, region{id: 1, connect: "local"}, region{id: 2, connect: "local"})
	out := &testlog.Buffer{}
	r := newRunner(t, stateDir, out)
	srv := localpg.New(localpg.Options{Dir: filepath.Join(stateDir, "servers", "default")})
	t.Cleanup(func() { srv.Destroy(context.Background()) })

	plan, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	add, change, destroy := plan.Counts()
	// 1 server; 3 × (database, schema, seed); 4 slots; 4 checkpoints.
	if add != 18 || change != 0 || destroy != 0 {
		t.Fatalf("plan on nothing: %d/%d/%d, want 18 to add:\n%s", add, change, destroy, strings.Join(planLines(plan), "\n"))
	}
	for _, a := range plan.Actions {
		if a.Op != planpkg.Create {
			t.Errorf("plan on nothing has %s", a)
		}
	}
	if plan.Actions[0].Kind != planpkg.KindServer {
		t.Errorf("first action is %s, want the server", plan.Actions[0])
	}
	if srv.Exists() {
		t.Fatal("plan created the server")
	}

	res, err := r.Apply(ctx, topo, nil)
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if res.Executed != 18 {
		t.Errorf("apply executed %d actions, want 18", res.Executed)
	}
	if !strings.Contains(out.String(), "Apply complete! Resources: 18 added, 0 changed, 0 destroyed.") {
		t.Errorf("apply output lacks the summary:\n%s", out)
	}

	plan, err = r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	if !plan.Empty() {
		t.Fatalf("plan after apply is not empty:\n%s", strings.Join(planLines(plan), "\n"))
	}
	before := serverSnapshot(t, srv)
	res, err = r.Apply(ctx, topo, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Executed != 0 {
		t.Errorf("second apply executed %d actions", res.Executed)
	}
	if after := serverSnapshot(t, srv); after != before {
		t.Errorf("second apply changed the server:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// A stopped managed server: plan starts it to look, says apply will
	// start it, and leaves it stopped.
	if err := srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	plan, err = r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	if got := planLines(plan); !slices.Equal(got, []string{"~ server local:default"}) {
		t.Errorf("plan with a stopped server: %v", got)
	}
	if notes := strings.Join(plan.Notes, "\n"); !strings.Contains(notes, "planned from the recorded state") {
		t.Errorf("plan with a stopped server does not say it planned from the state: %q", notes)
	}
	if strings.Contains(out.String(), "started PostgreSQL server") && strings.Count(out.String(), "started PostgreSQL server") > 1 {
		t.Errorf("plan started the stopped server:\n%s", out)
	}
	if srv.Running(ctx) {
		t.Error("plan left the stopped server running")
	}
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatal(err)
	}
	if !srv.Running(ctx) {
		t.Error("apply did not start the server")
	}

	if _, err := os.Stat(filepath.Join(stateDir, "state.json")); err != nil {
		t.Errorf("no state recorded: %v", err)
	}
	// Destroy without the topology: from the recorded state.
	out2 := &testlog.Buffer{}
	if _, err := newRunner(t, stateDir, out2).Destroy(ctx, nil); err != nil {
		t.Fatalf("destroy: %v\n%s", err, out2)
	}
	for _, want := range []string{"- server", "local:default", "- slot", "votr_0_to_1", "- database", "votr_2", "Destroy complete!"} {
		if !strings.Contains(out2.String(), want) {
			t.Errorf("destroy output lacks %q:\n%s", want, out2)
		}
	}
	if srv.Running(ctx) || srv.Exists() {
		t.Error("destroy left the managed server running or its data")
	}
	if _, err := os.Stat(filepath.Join(stateDir, "servers", "default")); !os.IsNotExist(err) {
		t.Errorf("server directory still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "state.json")); !os.IsNotExist(err) {
		t.Errorf("state file still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "apply.lock")); !os.IsNotExist(err) {
		t.Errorf("apply.lock left after a successful destroy: %v", err)
	}
	plan, err = r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	if add, _, _ := plan.Counts(); add != 18 {
		t.Errorf("plan after destroy: %d to add, want 18", add)
	}
}

// Plan, apply and destroy on a server reached by URL: the plan's exit code
// semantics, the JSON form, and that destroy leaves no votr database, slot,
// origin or publication.
func TestPlanApplyDestroyURL(t *testing.T) {
	ctx, pg, dir, url := onOwnServer(t)
	topo := topology(t, dir, 16, region{connect: url}, region{id: 1, connect: url}, region{id: 7, connect: url, database: "east"})
	out := &testlog.Buffer{}
	r := newRunner(t, filepath.Join(dir, "state"), out)

	plan, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"+ database votr_0 on 127.0.0.1:" + fmt.Sprint(pg.Port()),
	}
	if got := planLines(plan); got[0] != want[0] || len(got) != 17 {
		t.Fatalf("plan:\n%s", strings.Join(got, "\n"))
	}
	var text strings.Builder
	if err := plan.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"+ slot", "east_to_0", "votr_0_to_7", "+ checkpoint", "7:0 in votr_0", "Plan: 17 to add, 0 to change, 0 to destroy."} {
		if !strings.Contains(text.String(), w) {
			t.Errorf("plan text lacks %q:\n%s", w, text.String())
		}
	}
	var js strings.Builder
	if err := plan.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(js.String(), `"add": 17`) || !strings.Contains(js.String(), `"kind": "slot"`) {
		t.Errorf("plan JSON:\n%s", js.String())
	}

	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if plan, err = r.Plan(ctx, topo); err != nil || !plan.Empty() {
		t.Fatalf("plan after apply: %v %v", err, planLines(plan))
	}
	// Seeded and stamped: every region has the candidates and zero totals.
	for _, db := range []string{"votr_0", "votr_1", "east"} {
		got := pgtest.Query(t, pg.DSN(db), `SELECT count(*), sum(total)::bigint FROM totals`)
		if got[0] != "16|0" {
			t.Errorf("%s totals: %v", db, got)
		}
	}
	// A sink would create origins; destroy must remove them too.
	pgtest.Exec(t, pg.DSN("postgres"), `SELECT pg_replication_origin_create('votr_0_from_1')`, `SELECT pg_replication_origin_create('east_from_0')`)

	if _, err := r.Destroy(ctx, topo); err != nil {
		t.Fatalf("destroy: %v\n%s", err, out)
	}
	wantNoRows(t, pg.DSN("postgres"), "databases left", `SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')`)
	wantNoRows(t, pg.DSN("postgres"), "slots left", `SELECT slot_name FROM pg_replication_slots`)
	wantNoRows(t, pg.DSN("postgres"), "origins left", `SELECT roname FROM pg_replication_origin`)
	wantNoRows(t, pg.DSN("postgres"), "publications left", `SELECT pubname FROM pg_publication`)
}

// An apply that fails right after its k-th action, then run again, leaves
// the same state as one that never failed.
func TestApplyResumesAfterFailure(t *testing.T) {
	ctx, pg, dir, url := onOwnServer(t)
	topo := topology(t, dir, 8, region{connect: url}, region{id: 1, connect: url})
	stateDir := filepath.Join(dir, "state")
	out := &testlog.Buffer{}

	clean := newRunner(t, stateDir, out)
	res, err := clean.Apply(ctx, topo, nil)
	if err != nil {
		t.Fatal(err)
	}
	total := res.Executed
	if total != 10 {
		t.Fatalf("a clean apply ran %d actions, want 10", total)
	}
	reference := serverSnapshot(t, pg)
	if _, err := clean.Destroy(ctx, topo); err != nil {
		t.Fatal(err)
	}

	for _, k := range []int{1, 2, 4, 7, 9} {
		t.Run(fmt.Sprintf("after action %d", k), func(t *testing.T) {
			failing := newRunner(t, stateDir, out, func(o *Options) { o.FailAfter = k })
			res, err := failing.Apply(ctx, topo, nil)
			if err == nil || !strings.Contains(err.Error(), "injected failure") {
				t.Fatalf("apply with FailAfter=%d: %v", k, err)
			}
			if res.Executed != k {
				t.Errorf("executed %d actions before failing, want %d", res.Executed, k)
			}
			plan, err := clean.Plan(ctx, topo)
			if err != nil {
				t.Fatalf("plan after a failed apply: %v", err)
			}
			if len(plan.Actions) != total-k {
				t.Errorf("plan after failing at %d has %d actions, want %d:\n%s", k, len(plan.Actions), total-k, strings.Join(planLines(plan), "\n"))
			}
			res, err = clean.Apply(ctx, topo, nil)
			if err != nil {
				t.Fatalf("apply again: %v", err)
			}
			if res.Executed != total-k {
				t.Errorf("second apply ran %d actions, want %d", res.Executed, total-k)
			}
			if got := serverSnapshot(t, pg); got != reference {
				t.Errorf("state after failing at %d and applying again differs:\nwant:\n%s\ngot:\n%s", k, reference, got)
			}
			if _, err := clean.Destroy(ctx, topo); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Two applies at once on one state dir: the second fails with a message
// naming the first; once the first is done, applies work again.
func TestConcurrentApply(t *testing.T) {
	ctx, _, dir, url := onOwnServer(t)
	topo := topology(t, dir, 4, region{connect: url}, region{id: 1, connect: url})
	stateDir := filepath.Join(dir, "state")

	// The first apply waits at its confirmation prompt, holding the lock.
	answer, answerW := io.Pipe()
	out1 := &testlog.Buffer{}
	first := newRunner(t, stateDir, out1, func(o *Options) {
		o.AutoApprove, o.Terminal, o.In, o.Command = false, true, answer, "votr apply first.yaml"
	})
	done := make(chan error, 1)
	go func() {
		_, err := first.Apply(ctx, topo, nil)
		done <- err
	}()
	waitFor(t, func() bool { return strings.Contains(out1.String(), "Only 'yes' will be accepted") })

	out2 := &testlog.Buffer{}
	_, err := newRunner(t, stateDir, out2).Apply(ctx, topo, nil)
	host, _ := os.Hostname()
	lockPath := filepath.Join(stateDir, "apply.lock")
	for _, want := range []string{"another votr apply first.yaml", fmt.Sprintf("pid %d", os.Getpid()), "on host " + host, "started ", lockPath, "wait for it or stop it"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("second apply: error %v lacks %q", err, want)
		}
	}
	if strings.Contains(out2.String(), "+ database") {
		t.Errorf("the second apply planned while locked out:\n%s", out2)
	}

	fmt.Fprintln(answerW, "yes")
	if err := <-done; err != nil {
		t.Fatalf("first apply: %v\n%s", err, out1)
	}
	if _, err := newRunner(t, stateDir, out2).Destroy(ctx, topo); err != nil {
		t.Fatalf("destroy after the lock was released: %v", err)
	}
}

// Without a terminal and without --auto-approve, apply and destroy refuse
// and change nothing; an answer other than yes cancels.
func TestConfirmation(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	pg := pgtest.Start(t)
	dir := t.TempDir()
	topo := topology(t, dir, 4, region{connect: baseURL(pg)}, region{id: 1, connect: baseURL(pg)})
	out := &testlog.Buffer{}
	r := newRunner(t, filepath.Join(dir, "state"), out, func(o *Options) { o.AutoApprove = false })
	_, err := r.Apply(ctx, topo, nil)
	if err == nil || !strings.Contains(err.Error(), "--auto-approve") {
		t.Fatalf("apply without a terminal: %v", err)
	}
	r = newRunner(t, filepath.Join(dir, "state"), out, func(o *Options) {
		o.AutoApprove, o.Terminal, o.In = false, true, strings.NewReader("no\n")
	})
	if _, err := r.Apply(ctx, topo, nil); err != ErrCancelled {
		t.Fatalf("apply answered no: %v", err)
	}
	// ^C at the question (apply's first interrupt, which elsewhere
	// drains) is a no too, with nobody typing.
	silent, _ := io.Pipe()
	interrupt := make(chan struct{})
	close(interrupt)
	r = newRunner(t, filepath.Join(dir, "state"), out, func(o *Options) {
		o.AutoApprove, o.Terminal, o.In, o.Interrupt = false, true, silent, interrupt
	})
	qctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := r.Apply(qctx, topo, nil); err != ErrCancelled || qctx.Err() != nil {
		t.Fatalf("apply interrupted at the question: %v (ended by the test's deadline: %v)", err, qctx.Err() != nil)
	}
	wantNoRows(t, pg.DSN("postgres"), "databases created without confirmation", `SELECT datname FROM pg_database WHERE datname LIKE 'votr%'`)
}

// destroy refuses while a slot is in use and names the process holding it.
func TestDestroyRefusesActiveSlot(t *testing.T) {
	ctx, pg, dir, url := onOwnServer(t)
	topo := topology(t, dir, 4, region{connect: url}, region{id: 1, connect: url})
	out := &testlog.Buffer{}
	r := newRunner(t, filepath.Join(dir, "state"), out)
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatal(err)
	}

	conn, err := pgconn.Connect(ctx, pg.DSN("votr_1")+"&replication=database&application_name=holder-of-the-slot")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	err = pglogrepl.StartReplication(ctx, conn, "votr_1_to_0", 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'votr'"}})
	if err != nil {
		t.Fatal(err)
	}
	pid := conn.PID()
	waitFor(t, func() bool {
		return len(pgtest.Query(t, pg.DSN("postgres"), `SELECT 1 FROM pg_replication_slots WHERE slot_name = 'votr_1_to_0' AND active`)) == 1
	})

	_, err = r.Destroy(ctx, topo)
	for _, want := range []string{"votr_1_to_0", fmt.Sprintf("pid %d", pid), `"holder-of-the-slot"`, "nothing was removed"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("destroy with an active slot: error %v lacks %q", err, want)
		}
	}
	if got := pgtest.Query(t, pg.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname LIKE 'votr%'`); len(got) != 2 {
		t.Errorf("destroy removed databases although it refused: %v", got)
	}
	conn.Close(ctx)
	waitFor(t, func() bool {
		return len(pgtest.Query(t, pg.DSN("postgres"), `SELECT 1 FROM pg_replication_slots WHERE active`)) == 0
	})
	if _, err := r.Destroy(ctx, topo); err != nil {
		t.Fatalf("destroy once the slot is free: %v", err)
	}
}

// A password in a connect URL never shows in plan, apply or destroy output,
// logs, or errors.
func TestPasswordNeverPrinted(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	pg := pgtest.Start(t)
	dir := t.TempDir()
	// The test server's own password (it asks for one over TCP).
	secret := strings.TrimPrefix(strings.SplitN(pg.URL(), "@", 2)[0], "postgresql://postgres:")
	url := pg.URL()
	topo := topology(t, dir, 4, region{connect: url}, region{id: 1, connect: url})
	out := &testlog.Buffer{}
	r := newRunner(t, filepath.Join(dir, "state"), out)
	plan, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	plan.WriteText(out)
	plan.WriteJSON(out)
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatal(err)
	}
	state, err := os.ReadFile(filepath.Join(dir, "state", "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Destroy(ctx, topo); err != nil {
		t.Fatal(err)
	}
	// An unreachable server: the error names it, not its password.
	bad := fmt.Sprintf("postgresql://postgres:%s@127.0.0.1:1/?sslmode=disable", secret)
	topoBad := topology(t, t.TempDir(), 4, region{connect: bad}, region{id: 1, connect: bad})
	_, errBad := r.Plan(ctx, topoBad)
	if errBad == nil {
		t.Fatal("plan against a closed port succeeded")
	}
	all := out.String() + string(state) + errBad.Error()
	if strings.Contains(all, secret) {
		t.Errorf("the password was printed:\n%s", all)
	}
	if !strings.Contains(all, "xxxxx") && !strings.Contains(string(state), "postgres:xxxxx@") {
		t.Errorf("expected the redacted URL in the state file:\n%s", state)
	}
	if !strings.Contains(errBad.Error(), "127.0.0.1:1") {
		t.Errorf("the connection error does not name the server: %v", errBad)
	}
}

// A database with a region's name that votr did not create stops plan and
// apply before anything is touched.
func TestForeignDatabase(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	pg := pgtest.Start(t)
	pgtest.CreateDB(t, pg, "votr_1")
	pgtest.Exec(t, pg.DSN("votr_1"), `CREATE TABLE precious (x int)`)
	dir := t.TempDir()
	url := baseURL(pg)
	topo := topology(t, dir, 4, region{connect: url}, region{id: 1, connect: url})
	out := &testlog.Buffer{}
	r := newRunner(t, filepath.Join(dir, "state"), out)
	want := fmt.Sprintf("database votr_1 on 127.0.0.1:%d exists but was not created by votr; choose another `database:`", pg.Port())
	if _, err := r.Plan(ctx, topo); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("plan: %v, want %q", err, want)
	} else if pos := filepath.Join(dir, "topology.yaml") + ":"; !strings.HasPrefix(err.Error(), pos) {
		t.Errorf("plan: %v does not point at the region in the file (%s...)", err, pos)
	}
	if _, err := r.Apply(ctx, topo, nil); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("apply: %v, want %q", err, want)
	}
	if got := pgtest.Query(t, pg.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname LIKE 'votr%'`); !slices.Equal(got, []string{"votr_1"}) {
		t.Errorf("databases after the refused apply: %v", got)
	}
	wantNoRows(t, pg.DSN("postgres"), "slots after the refused apply", `SELECT slot_name FROM pg_replication_slots`)
	if got := pgtest.Query(t, pg.DSN("votr_1"), `SELECT relname FROM pg_class WHERE relname IN ('candidates', 'precious')`); !slices.Equal(got, []string{"precious"}) {
		t.Errorf("the foreign database was touched: %v", got)
	}
	// destroy leaves it alone too.
	if _, err := r.Destroy(ctx, topo); err != nil {
		t.Fatal(err)
	}
	if got := pgtest.Query(t, pg.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname = 'votr_1'`); len(got) != 1 {
		t.Error("destroy dropped a database that is not votr's")
	}
}
