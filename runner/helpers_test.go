package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/localpg"
	planpkg "github.com/votr-dev/votr/plan"
)

// scriptPath is the project's merge script, which topologies in tests use.
func scriptPath(t testing.TB) string {
	t.Helper()
	p, err := filepath.Abs("../scripts/votr.ts")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// region is one region of a test topology.
type region struct {
	id       int
	connect  string
	database string
}

// topology writes a topology file into dir and loads it.
func topology(t testing.TB, dir string, candidates int, hub region, spokes ...region) *config.Topology {
	t.Helper()
	var b strings.Builder
	write := func(r region, indent string) {
		if r.connect != "" {
			fmt.Fprintf(&b, "%sconnect: %q\n", indent, r.connect)
		}
		if r.database != "" {
			fmt.Fprintf(&b, "%sdatabase: %s\n", indent, r.database)
		}
	}
	b.WriteString("hub:\n")
	write(hub, "  ")
	if hub.connect == "" && hub.database == "" {
		b.WriteString("  connect: local\n")
	}
	b.WriteString("spokes:\n")
	for _, s := range spokes {
		fmt.Fprintf(&b, "  - id: %d\n", s.id)
		write(s, "    ")
	}
	fmt.Fprintf(&b, "candidates: %d\nworkers: 1\ndrainDelay: 20s\nscript: %s\n", candidates, scriptPath(t))
	path := filepath.Join(dir, "topology.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	topo, err := config.Load(path, os.LookupEnv)
	if err != nil {
		t.Fatalf("load test topology:\n%s\n%v", b.String(), err)
	}
	return topo
}

// newRunner is a runner that approves automatically and writes its output
// and logs into out.
func newRunner(t testing.TB, stateDir string, out *testlog.Buffer, mod ...func(*Options)) *Runner {
	t.Helper()
	o := Options{
		StateDir:    stateDir,
		Out:         out,
		AutoApprove: true,
		Logger:      slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Command:     "votr apply (test)",
	}
	for _, m := range mod {
		m(&o)
	}
	return New(o)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// baseURL is a server's URL without a database, as a topology connect.
func baseURL(s *localpg.Server) string {
	return s.URL()
}

// serverSnapshot describes what votr left on a server, for comparing two
// runs: databases, slots, origins and, per votr database, its schema
// objects, publication tables and row counts.
func serverSnapshot(t testing.TB, s *localpg.Server) string {
	t.Helper()
	var b strings.Builder
	dbs := pgtest.Query(t, s.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')`)
	fmt.Fprintf(&b, "databases: %v\n", dbs)
	fmt.Fprintf(&b, "slots: %v\n", pgtest.Query(t, s.DSN("postgres"), `SELECT slot_name, plugin, database, slot_type FROM pg_replication_slots`))
	fmt.Fprintf(&b, "origins: %v\n", pgtest.Query(t, s.DSN("postgres"), `SELECT roname FROM pg_replication_origin`))
	for _, db := range dbs {
		dsn := s.DSN(db)
		fmt.Fprintf(&b, "%s objects: %v\n", db, pgtest.Query(t, dsn, `SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || c.relreplident::text
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'votr') AND c.relkind IN ('r', 'S')`))
		fmt.Fprintf(&b, "%s triggers: %v\n", db, pgtest.Query(t, dsn, `SELECT tgrelid::regclass::text || ':' || tgname FROM pg_trigger WHERE NOT tgisinternal`))
		fmt.Fprintf(&b, "%s publication: %v\n", db, pgtest.Query(t, dsn, `SELECT pubname || ':' || tablename FROM pg_publication_tables`))
		fmt.Fprintf(&b, "%s region: %v\n", db, pgtest.Query(t, dsn, `SELECT id FROM votr.region`))
		fmt.Fprintf(&b, "%s checkpoints: %v\n", db, pgtest.Query(t, dsn, `SELECT feed, source_lsn FROM votr.checkpoints`))
		fmt.Fprintf(&b, "%s rows: %v\n", db, pgtest.Query(t, dsn, `SELECT (SELECT count(*) FROM candidates), (SELECT count(*) FROM totals),
			(SELECT sum(total)::bigint FROM totals), (SELECT count(*) FROM ballots), (SELECT md5(string_agg(candidate::text || name || mood || version || whence::text || src, ',' ORDER BY candidate)) FROM candidates)`))
	}
	return b.String()
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func planLines(p *planpkg.Plan) []string {
	var out []string
	for _, a := range p.Actions {
		out = append(out, fmt.Sprintf("%s %s %s", a.Op.Symbol(), a.Kind, a.Target))
	}
	return out
}

// applied is what an Apply in the background returned.
type applied struct {
	res *ApplyResult
	err error
}

// applyInBackground runs r.Apply and delivers what it returns.
func applyInBackground(ctx context.Context, r *Runner, topo *config.Topology, o *RunOptions) <-chan applied {
	done := make(chan applied, 1)
	go func() {
		res, err := r.Apply(ctx, topo, o)
		done <- applied{res, err}
	}()
	return done
}

// wantRunOK fails the test unless the apply returned without error and
// its run caught up, checked out and saw no invariant violation.
func wantRunOK(t *testing.T, a applied, out fmt.Stringer) *RunResult {
	t.Helper()
	if a.err != nil {
		t.Fatalf("apply: %v\n%s", a.err, out)
	}
	run := a.res.Run
	if !run.OK || !run.CaughtUp || run.Violations != 0 {
		t.Fatalf("run not OK (caught up %v, violations %d): %v\n%s", run.CaughtUp, run.Violations, run.Report.Problems(), out)
	}
	return run
}

// waitFor polls cond for up to 30 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wantNoRows fails the test, naming what, if sql returns any row on dsn.
func wantNoRows(t testing.TB, dsn, what, sql string) {
	t.Helper()
	if got := pgtest.Query(t, dsn, sql); len(got) != 0 {
		t.Errorf("%s: %v", what, got)
	}
}

// onOwnServer is how most runner tests begin: in parallel, with a
// PostgreSQL server and a directory of their own, and the server's URL for
// their topologies.
func onOwnServer(t *testing.T) (ctx context.Context, pg *localpg.Server, dir, url string) {
	t.Parallel()
	pg = pgtest.Start(t)
	return ctxT(t), pg, t.TempDir(), baseURL(pg)
}

// deployedAndRun is how the repair tests begin: on their own server, a hub
// and spokes 1 and 2 (8 candidates, workers without pauses) applied and
// run for two seconds, which must converge. It returns what the test
// needs to change the deployment and apply again.
func deployedAndRun(t *testing.T) (ctx context.Context, pg *localpg.Server, topo *config.Topology, r *Runner, out *testlog.Buffer) {
	t.Helper()
	ctx, pg, dir, url := onOwnServer(t)
	topo = topology(t, dir, 8, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url})
	topo.Workload.Interval = 0
	out = &testlog.Buffer{}
	r = newRunner(t, filepath.Join(dir, "state"), out)
	res, err := r.Apply(ctx, topo, &RunOptions{Duration: 2 * time.Second, RateLimit: 30, StatusEvery: time.Second})
	if err != nil || !res.Run.OK {
		t.Fatalf("first run: %v\n%s", err, out)
	}
	return ctx, pg, topo, r, out
}

// serverDir is a test directory a managed server can live under: the server
// runs as user postgres when the tests run as root, and must pass through
// the per-test parent Go makes 0700 (a user's state dir is reachable).
func serverDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// onOneServer starts a test server and writes a topology with a hub and
// spokes 1..spokes on it, with its candidates, and a runner whose state
// lives beside the topology.
func onOneServer(t *testing.T, candidates, spokes int) (*localpg.Server, *config.Topology, *Runner, *testlog.Buffer) {
	t.Helper()
	pg := pgtest.Start(t)
	dir := t.TempDir()
	url := baseURL(pg)
	var regions []region
	for id := 1; id <= spokes; id++ {
		regions = append(regions, region{id: id, connect: url})
	}
	topo := topology(t, dir, candidates, region{connect: url}, regions...)
	out := &testlog.Buffer{}
	return pg, topo, newRunner(t, filepath.Join(dir, "state"), out), out
}
