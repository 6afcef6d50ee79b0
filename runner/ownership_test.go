package runner

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
)

// Two state dirs, one server: the second sees the first's databases as
// another deployment's. Its plan says whose they are; its apply and
// destroy refuse and remove nothing; with --take-over they proceed, after
// which the first deployment is the one refused.
func TestDeploymentOwnership(t *testing.T) {
	ctx, pg, dir, url := onOwnServer(t)
	dirA, dirB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, d := range []string{dirA, dirB} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	topoA := topology(t, dirA, 4, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url})
	topoB := topology(t, dirB, 4, region{connect: url}, region{id: 1, connect: url})
	out := &testlog.Buffer{}
	a := newRunner(t, filepath.Join(dirA, "state"), out)
	if _, err := a.Apply(ctx, topoA, nil); err != nil {
		t.Fatalf("apply A: %v\n%s", err, out)
	}
	var st State
	b, _ := os.ReadFile(filepath.Join(dirA, "state", "state.json"))
	if err := json.Unmarshal(b, &st); err != nil || len(st.Deployment) != 12 {
		t.Fatalf("A's state has no deployment id: %v\n%s", err, b)
	}
	idA := st.Deployment
	comment := pgtest.Query(t, pg.DSN("postgres"), `SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'votr_1'`)
	if len(comment) != 1 || !strings.Contains(comment[0], "of deployment "+idA) {
		t.Fatalf("votr_1's comment does not record deployment %s: %v", idA, comment)
	}
	before := serverSnapshot(t, pg)

	bOut := &testlog.Buffer{}
	rb := newRunner(t, filepath.Join(dirB, "state"), bOut)
	p, err := rb.Plan(ctx, topoB)
	if err != nil {
		t.Fatalf("plan B: %v", err)
	}
	var text strings.Builder
	p.WriteText(&text)
	if len(p.Foreign) != 2 || !strings.Contains(text.String(), "belongs to votr deployment "+idA) || !strings.Contains(text.String(), "--take-over") {
		t.Errorf("plan B does not say whose the databases are (foreign %v):\n%s", p.Foreign, text.String())
	}
	if _, err := rb.Apply(ctx, topoB, nil); err == nil || !strings.Contains(err.Error(), "apply refused, nothing was changed") || !strings.Contains(err.Error(), idA) {
		t.Errorf("apply B: %v, want a refusal naming deployment %s", err, idA)
	}
	if _, err := rb.Destroy(ctx, topoB); err == nil || !strings.Contains(err.Error(), "destroy refused, nothing was removed") || !strings.Contains(err.Error(), idA) {
		t.Errorf("destroy B: %v, want a refusal naming deployment %s", err, idA)
	}
	if after := serverSnapshot(t, pg); after != before {
		t.Fatalf("the refused commands changed the server:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// Taken over, B's apply would remove A's feeds between region 2 and the
	// hub, and region 2 is not in B's topology: its feed into the hub cannot
	// be drained first, so that is refused too until B gives it up.
	rbt := newRunner(t, filepath.Join(dirB, "state"), bOut, func(o *Options) { o.TakeOver = true })
	if _, err := rbt.Apply(ctx, topoB, nil); err == nil || !strings.Contains(err.Error(), "feed 2:0") || !strings.Contains(err.Error(), "--drop-undrained") {
		t.Errorf("apply B --take-over: %v, want a refusal naming the undrainable feed 2:0 and --drop-undrained", err)
	}
	if after := serverSnapshot(t, pg); after != before {
		t.Fatalf("the refused take-over changed the server:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// With both: B's apply goes on (removing A's feeds to region 2 from
	// the hub) and records the databases as B's.
	rbt = newRunner(t, filepath.Join(dirB, "state"), bOut, func(o *Options) { o.TakeOver, o.DropUndrained = true, true })
	res, err := rbt.Apply(ctx, topoB, nil)
	if err != nil {
		t.Fatalf("apply B --take-over: %v\n%s", err, bOut)
	}
	if lines := planLines(res.Plan); !slices.Contains(lines, "~ database votr_0 on "+topoB.Hub.ServerKey()) || !slices.Contains(lines, "- slot votr_0_to_2 on "+topoB.Hub.ServerKey()) {
		t.Errorf("apply B --take-over plan: %v", lines)
	}
	if got := pgtest.Query(t, pg.DSN("postgres"), `SELECT slot_name FROM pg_replication_slots WHERE slot_name = 'votr_0_to_2'`); len(got) != 0 {
		t.Errorf("take-over apply left slot %v", got)
	}
	// Now A is the stranger: its destroy refuses, then with --take-over
	// removes everything.
	if _, err := a.Destroy(ctx, topoA); err == nil || !strings.Contains(err.Error(), "destroy refused") {
		t.Errorf("destroy A after B took over: %v", err)
	}
	if got := pgtest.Query(t, pg.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname LIKE 'votr%' ORDER BY 1`); !slices.Equal(got, []string{"votr_0", "votr_1", "votr_2"}) {
		t.Errorf("databases after A's refused destroy: %v", got)
	}
	at := newRunner(t, filepath.Join(dirA, "state"), out, func(o *Options) { o.TakeOver = true })
	if _, err := at.Destroy(ctx, topoA); err != nil {
		t.Fatalf("destroy A --take-over: %v\n%s", err, out)
	}
	wantNoRows(t, pg.DSN("postgres"), "databases after destroy --take-over", `SELECT datname FROM pg_database WHERE datname LIKE 'votr%'`)
	wantNoRows(t, pg.DSN("postgres"), "slots after destroy --take-over", `SELECT slot_name FROM pg_replication_slots`)
	if _, err := os.Stat(filepath.Join(dirA, "state")); !os.IsNotExist(err) {
		t.Errorf("destroy left the state dir (apply.lock?): %v", err)
	}
}

// A server gone: destroy refuses as a whole and says so, with the ways on;
// --skip-unreachable removes the rest and keeps the lost region recorded;
// state rm forgets it.
func TestDestroySkipUnreachable(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	hub, spoke := pgtest.Start(t), pgtest.Start(t)
	dir := t.TempDir()
	topo := topology(t, dir, 4, region{connect: baseURL(hub)}, region{id: 1, connect: baseURL(spoke)})
	out := &testlog.Buffer{}
	stateDir := filepath.Join(dir, "state")
	r := newRunner(t, stateDir, out)
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if err := spoke.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := r.Destroy(ctx, topo)
	for _, want := range []string{"destroy refused, nothing was removed", "is unreachable", "--skip-unreachable", "votr state rm 1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("destroy with spoke 1 down: %v, want %q", err, want)
		}
	}
	if got := pgtest.Query(t, hub.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname = 'votr_0'`); len(got) != 1 {
		t.Fatal("the refused destroy removed the hub's database")
	}
	skipOut := &testlog.Buffer{}
	rs := newRunner(t, stateDir, skipOut, func(o *Options) { o.SkipUnreachable = true })
	if _, err := rs.Destroy(ctx, topo); err != nil {
		t.Fatalf("destroy --skip-unreachable: %v\n%s", err, skipOut)
	}
	wantNoRows(t, hub.DSN("postgres"), "hub databases after destroy --skip-unreachable", `SELECT datname FROM pg_database WHERE datname LIKE 'votr%'`)
	wantNoRows(t, hub.DSN("postgres"), "hub slots after destroy --skip-unreachable", `SELECT slot_name FROM pg_replication_slots`)
	for _, want := range []string{"Destroy complete!", "Not removed (server unreachable", "region 1: database votr_1 on " + topo.Spokes[0].ServerKey(), "votr state rm 1"} {
		if !strings.Contains(skipOut.String(), want) {
			t.Errorf("destroy --skip-unreachable output lacks %q:\n%s", want, skipOut)
		}
	}
	st, err := r.loadState()
	if err != nil || len(st.Regions) != 1 || st.Regions[0].ID != 1 {
		t.Fatalf("state after the skip should keep region 1 only: %+v, %v", st, err)
	}
	if err := r.StateRm([]int{7}); err == nil || !strings.Contains(err.Error(), "not recorded") {
		t.Errorf("state rm of an unknown region: %v", err)
	}
	rmOut := &testlog.Buffer{}
	if err := newRunner(t, stateDir, rmOut).StateRm([]int{1}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rmOut.String(), "Forgot region 1 (database votr_1 on") {
		t.Errorf("state rm output: %s", rmOut)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "state.json")); !os.IsNotExist(err) {
		t.Errorf("state file after forgetting the last region: %v", err)
	}
	// The spoke's server comes back: its database is there, untouched.
	if err := spoke.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pgtest.Query(t, spoke.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname = 'votr_1'`); len(got) != 1 {
		t.Error("state rm touched the spoke's server")
	}
}

// Columns dropped or retyped by hand: plan refuses, naming the column,
// both types and the SQL that repairs it, instead of a raw SQL error; the
// repair it names makes the plan empty again.
func TestColumnDrift(t *testing.T) {
	pg, topo, r, out := onOneServer(t, 4, 1)
	ctx := ctxT(t)
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	pgtest.Exec(t, pg.DSN("votr_1"), `ALTER TABLE totals ALTER COLUMN total TYPE text`)
	_, err := r.Plan(ctx, topo)
	for _, want := range []string{"region 1: database votr_1", "column public.totals.total is text, votr's is bigint", "ALTER TABLE public.totals ALTER COLUMN total TYPE bigint USING total::bigint;"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("plan with a retyped column: %v, want %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "operator does not exist") {
		t.Errorf("plan gave a raw SQL error: %v", err)
	}
	if _, err := r.Apply(ctx, topo, nil); err == nil || !strings.Contains(err.Error(), "totals.total is text") {
		t.Errorf("apply with a retyped column: %v", err)
	}
	pgtest.Exec(t, pg.DSN("votr_1"), `ALTER TABLE public.totals ALTER COLUMN total TYPE bigint USING total::bigint`)
	if p, err := r.Plan(ctx, topo); err != nil || !p.Empty() {
		t.Fatalf("plan after the repair it named: %v %v", err, p)
	}

	pgtest.Exec(t, pg.DSN("votr_0"), `ALTER TABLE ballots DROP COLUMN whence`)
	_, err = r.Plan(ctx, topo)
	for _, want := range []string{"region 0", "column public.ballots.whence is missing (votr's is jsonb)", "DROP TABLE public.ballots CASCADE;"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("plan with a dropped column: %v, want %q", err, want)
		}
	}
	pgtest.Exec(t, pg.DSN("votr_0"), `DROP TABLE public.ballots CASCADE`)
	p, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatalf("plan after dropping the table as told: %v", err)
	}
	if lines := planLines(p); !slices.Contains(lines, "~ schema votr_0 on "+topo.Hub.ServerKey()) {
		t.Errorf("plan does not re-create the table: %v", lines)
	}
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply after dropping the table: %v\n%s", err, out)
	}
	if p, err := r.Plan(ctx, topo); err != nil || !p.Empty() {
		t.Errorf("plan after the repair: %v %v", err, planLines(p))
	}
}

// plan names the missing server binaries before proposing to create a
// server, and creates nothing.
func TestPlanChecksBinaries(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	topo := topology(t, dir, 4, region{connect: "local"}, region{id: 1, connect: "local"})
	stateDir := filepath.Join(dir, "state")
	r := newRunner(t, stateDir, &testlog.Buffer{}, func(o *Options) { o.BinDir = t.TempDir() })
	_, err := r.Plan(context.Background(), topo)
	for _, want := range []string{"server local:default: the plan would create it", "initdb", "apt-get install"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("plan without binaries: %v, want %q", err, want)
		}
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("plan created the state dir: %v", err)
	}
}
