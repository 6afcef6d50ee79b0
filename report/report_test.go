package report

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/schema"
)

// setupRegion creates database name on srv as region id, seeded.
func setupRegion(t *testing.T, srv *localpg.Server, name string, id int) string {
	t.Helper()
	dsn := pgtest.CreateDB(t, srv, name)
	pgtest.Exec(t, dsn, schema.Create(id)...)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.SendBatch(ctx, schema.Seed(6)).Close(); err != nil {
		t.Fatalf("seed: %v", err)
	}
	return dsn
}

// castVotes writes ballots the plain way in a region (the triggers stamp
// them with the region's clock).
func castVotes(t *testing.T, dsn string, votes map[int]int) {
	t.Helper()
	cs := schema.Candidates(6)
	var sql []string
	for i, n := range votes {
		sql = append(sql,
			`UPDATE totals SET total = total + `+itoa(n)+` WHERE candidate = '`+cs[i].ID+`'`,
			`INSERT INTO ballots (candidate) SELECT '`+cs[i].ID+`' FROM generate_series(1, `+itoa(n)+`)`)
	}
	pgtest.Exec(t, dsn, append([]string{"BEGIN"}, append(sql, "COMMIT")...)...)
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// replicate copies every workload row of from into to as a perfect sink
// would: with the triggers bypassed, so rows keep their origin's clock.
func replicate(t *testing.T, from, to string) {
	t.Helper()
	ctx := context.Background()
	src, err := pgx.Connect(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	dst, err := pgx.Connect(ctx, to)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close(ctx)
	for _, q := range []struct{ read, write string }{
		{`SELECT json_agg(c) FROM candidates c`,
			`UPDATE candidates t SET name = r.name, mood = r.mood, version = r.version, whence = r.whence, src = r.src
			 FROM json_populate_recordset(NULL::candidates, $1) r WHERE t.candidate = r.candidate`},
		{`SELECT json_agg(b) FROM ballots b`,
			`INSERT INTO ballots SELECT * FROM json_populate_recordset(NULL::ballots, $1) ON CONFLICT DO NOTHING`},
		{`SELECT json_agg(t) FROM totals t`,
			`UPDATE totals t SET total = r.total, whence = r.whence, src = r.src
			 FROM json_populate_recordset(NULL::totals, $1) r WHERE t.candidate = r.candidate`},
	} {
		var rows []byte
		if err := src.QueryRow(ctx, q.read).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows == nil {
			continue
		}
		tx, err := dst.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `SET LOCAL `+schema.SinkSetting+` = on`); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, q.write, string(rows)); err != nil {
			t.Fatalf("replicate: %v", err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// twoRegions gives a hub and spoke 1 on one server, spoke 1 having voted
// and the hub holding an exact copy.
func twoRegions(t *testing.T) (srv *localpg.Server, regions []RegionTarget, hub, spoke string) {
	t.Helper()
	srv = pgtest.Start(t)
	regions, hub, spoke = twoRegionsOn(t, srv, "")
	return srv, regions, hub, spoke
}

// twoRegionsOn is twoRegions on an existing server, the databases' names
// ending in suffix.
func twoRegionsOn(t *testing.T, srv *localpg.Server, suffix string) (regions []RegionTarget, hub, spoke string) {
	t.Helper()
	hub = setupRegion(t, srv, "votr_0"+suffix, 0)
	spoke = setupRegion(t, srv, "votr_1"+suffix, 1)
	castVotes(t, spoke, map[int]int{0: 3, 2: 5, 5: 1})
	castVotes(t, spoke, map[int]int{2: 2})
	pgtest.Exec(t, spoke, `UPDATE candidates SET mood = 'smug', version = version + 1 WHERE name LIKE 'Basil%'`)
	replicate(t, spoke, hub)
	return []RegionTarget{{ID: 0, Label: "0 (hub)", DSN: hub}, {ID: 1, Label: "1 (us-east)", DSN: spoke}}, hub, spoke
}

func gather(t *testing.T, regions []RegionTarget, feeds []FeedTarget) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := Gather(ctx, regions, feeds, 0)
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	return r
}

func TestIdenticalRegionsConverge(t *testing.T) {
	_, regions, _, _ := twoRegions(t)
	r := gather(t, regions, nil)
	if ps := r.Problems(); len(ps) != 0 || !r.OK() {
		t.Fatalf("identical regions reported as not converged: %q", ps)
	}
	for _, reg := range r.Regions {
		if reg.Ballots != 11 || reg.TotalsSum != 11 || reg.Candidates != 6 {
			t.Errorf("region %s: %d ballots, sum %d, %d candidates; want 11, 11, 6", reg.Label, reg.Ballots, reg.TotalsSum, reg.Candidates)
		}
		if len(reg.BySrc) != 1 || reg.BySrc[1] != 11 {
			t.Errorf("region %s: ballots by src %v, want {1: 11}", reg.Label, reg.BySrc)
		}
		if !reg.Match.all() {
			t.Errorf("region %s: match %+v, want all true", reg.Label, reg.Match)
		}
	}

	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(text.String(), "converged: all 2 regions identical\n") {
		t.Errorf("text report does not end with the verdict:\n%s", text.String())
	}
	t.Logf("\n%s", text.String())

	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var parsed struct {
		OK       bool     `json:"ok"`
		Problems []string `json:"problems"`
		Regions  []struct {
			ID            int              `json:"id"`
			Ballots       int64            `json:"ballots"`
			BallotsDigest string           `json:"ballots_digest"`
			BySrc         map[string]int64 `json:"ballots_by_src"`
			Violations    []any            `json:"violations"`
		} `json:"regions"`
	}
	if err := json.Unmarshal(js.Bytes(), &parsed); err != nil {
		t.Fatalf("JSON report does not parse: %v\n%s", err, js.String())
	}
	if !parsed.OK || len(parsed.Problems) != 0 || len(parsed.Regions) != 2 || parsed.Regions[1].BySrc["1"] != 11 ||
		len(parsed.Regions[0].BallotsDigest) != 32 || parsed.Regions[0].Violations == nil {
		t.Errorf("JSON report: %+v", parsed)
	}

	// Nothing lost, nothing doubled: exact committed counts pass, others not.
	r.Check(map[int]int64{1: 11})
	if !r.OK() {
		t.Errorf("Check with the committed count: %q", r.Problems())
	}
	for committed, want := range map[int64]string{12: "lost ballots", 10: "doubled ballots"} {
		r.Check(map[int]int64{1: committed})
		if ps := strings.Join(r.Problems(), "\n"); !strings.Contains(ps, want) || !strings.Contains(ps, "region 0 (hub)") {
			t.Errorf("Check with %d committed: problems %q, want %q for each region", committed, ps, want)
		}
	}
}

// TestDivergenceIsReported breaks a copy in one way at a time and expects
// a problem naming the region and what differs.
func TestDivergenceIsReported(t *testing.T) {
	cs := schema.Candidates(6)
	sink := `SET ` + schema.SinkSetting + ` = on`
	tests := []struct {
		name   string
		sql    []string // run on the spoke
		want   []string // substrings of the problems
		differ string   // the text table's MATCHES HUB cell
	}{
		{
			name: "a ballot missing (totals adjusted with it)",
			sql: []string{sink,
				`DELETE FROM ballots WHERE ctid = (SELECT ctid FROM ballots WHERE candidate = '` + cs[2].ID + `' LIMIT 1)`,
				`UPDATE totals SET total = total - 1 WHERE candidate = '` + cs[2].ID + `'`},
			want:   []string{"region 1 (us-east) holds different ballots than the hub: 10 ballots vs 11 at the hub (from region 1: 10 vs 11)", "region 1 (us-east) has different totals than the hub: sum 10 vs 11"},
			differ: "NO: ballots,totals",
		},
		{
			name:   "a ballot replaced by another",
			sql:    []string{sink, `UPDATE ballots SET ballot = gen_random_uuid() WHERE ctid = (SELECT ctid FROM ballots LIMIT 1)`},
			want:   []string{"region 1 (us-east) holds different ballots than the hub: 11 ballots vs 11 at the hub (same count per originating region, different ballots)"},
			differ: "NO: ballots",
		},
		{
			name:   "a candidate's mood differs",
			sql:    []string{sink, `UPDATE candidates SET mood = 'gloomy' WHERE candidate = '` + cs[1].ID + `'`},
			want:   []string{"region 1 (us-east) has different candidate rows than the hub"},
			differ: "NO: candidates",
		},
		{
			name: "invariant broken",
			sql:  []string{sink, `UPDATE totals SET total = total + 4 WHERE candidate = '` + cs[3].ID + `'`},
			want: []string{"region 1 (us-east) violates the invariant for 1 candidate(s): " + cs[3].ID + " (" + cs[3].Name + "): 0 ballots but total 4",
				"region 1 (us-east) has different totals than the hub: sum 15 vs 11"},
			differ: "NO: totals",
		},
	}
	srv := pgtest.Start(t)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			regions, _, spoke := twoRegionsOn(t, srv, fmt.Sprintf("_%d", i))
			pgtest.Exec(t, spoke, tc.sql...)
			r := gather(t, regions, nil)
			if r.OK() {
				t.Fatal("diverged regions reported OK")
			}
			ps := strings.Join(r.Problems(), "\n")
			for _, w := range tc.want {
				if !strings.Contains(ps, w) {
					t.Errorf("problems do not say %q:\n%s", w, ps)
				}
			}
			var text bytes.Buffer
			if err := r.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			out := text.String()
			if i == 0 {
				t.Logf("\n%s", out)
			}
			if !strings.Contains(out, "NOT converged") || !strings.Contains(out, tc.differ) {
				t.Errorf("text report lacks the verdict or %q:\n%s", tc.differ, out)
			}
		})
	}
}

func TestUnreachableRegionAndSecrets(t *testing.T) {
	_, regions, _, _ := twoRegions(t)
	regions = append(regions, RegionTarget{ID: 2, Label: "2", DSN: "postgres://votr:s3cr3t-pw@127.0.0.1:1/votr_2?sslmode=disable"})
	r := gather(t, regions, nil)
	if r.OK() {
		t.Fatal("report with an unreachable region is OK")
	}
	if reg, _ := r.Region(2); reg.Err == "" {
		t.Errorf("region 2 has no error")
	}
	if reg, _ := r.Region(1); reg.Err != "" || !reg.Match.all() {
		t.Errorf("a dead region spoiled a live one: %+v", reg)
	}
	var text, js bytes.Buffer
	_ = r.WriteText(&text)
	_ = r.WriteJSON(&js)
	for _, out := range []string{text.String(), js.String(), strings.Join(r.Problems(), "\n")} {
		if strings.Contains(out, "s3cr3t-pw") {
			t.Errorf("password shown:\n%s", out)
		}
	}
	if !strings.Contains(text.String(), "region 2 could not be read") {
		t.Errorf("text report does not name the unreachable region:\n%s", text.String())
	}
}

func TestWrongDatabaseIsCaught(t *testing.T) {
	_, regions, hub, _ := twoRegions(t)
	regions[1].DSN = hub // region 1 pointed at the hub's database
	r := gather(t, regions, nil)
	reg, _ := r.Region(1)
	if !strings.Contains(reg.Err, "this database is region 0's, not region 1's") {
		t.Errorf("region 1's error = %q", reg.Err)
	}
}

func TestFeeds(t *testing.T) {
	srv, regions, hub, spoke := twoRegions(t)
	_ = srv
	slot := schema.Slot("votr_1", 0)
	pgtest.Exec(t, spoke, `SELECT pg_create_logical_replication_slot('`+slot+`', 'pgoutput')`)
	castVotes(t, spoke, map[int]int{1: 2}) // WAL the slot has not confirmed
	pgtest.Exec(t, hub,
		`INSERT INTO votr.checkpoints (feed, source_lsn, source_commit, applied_at, txns, rows, conflicts)
		 VALUES ('1:0', '0/1234', now(), now(), 7, 40, 2)`)
	feeds := []FeedTarget{
		{Name: "1:0", SourceID: 1, TargetID: 0, SourceDSN: spoke, TargetDSN: hub, Slot: slot},
		{Name: "0:1", SourceID: 0, TargetID: 1, SourceDSN: hub, TargetDSN: spoke, Slot: schema.Slot("votr_0", 1)},
	}
	regions = regions[:1] // the spoke now differs; only the feeds matter here
	r := gather(t, regions, feeds)

	f := r.Feeds[0]
	if f.SourceErr != "" || f.TargetErr != "" || !f.SlotExists || f.SlotActive || f.WALStatus != "reserved" ||
		f.LagBytes <= 0 || f.RetainedBytes <= 0 || f.Checkpoint == nil ||
		f.Checkpoint.SourceLSN != "0/1234" || f.Checkpoint.Txns != 7 || f.Checkpoint.Rows != 40 || f.Checkpoint.Conflicts != 2 {
		t.Errorf("feed 1:0 = %+v (checkpoint %+v)", f, f.Checkpoint)
	}
	if g := r.Feeds[1]; g.SlotExists || g.Checkpoint != nil || g.LagBytes != -1 {
		t.Errorf("feed 0:1 = %+v", g)
	}
	ps := strings.Join(r.Problems(), "\n")
	if want := "feed 0:1: replication slot votr_0_to_1 does not exist"; !strings.Contains(ps, want) {
		t.Errorf("problems lack %q:\n%s", want, ps)
	}
	if strings.Contains(ps, "feed 1:0") {
		t.Errorf("healthy feed 1:0 reported:\n%s", ps)
	}
	// The lag is the one transaction the slot holds after the checkpoint.
	// An echo of the reverse feed (its origin) and a write to a table that
	// is not published are not changes the sink would apply.
	if f.UnappliedTxns != 1 || f.UnappliedCapped {
		t.Errorf("feed 1:0 lag = %d txns (capped %v), want 1", f.UnappliedTxns, f.UnappliedCapped)
	}
	echo := schema.Origin("votr_1", 0)
	pgtest.Exec(t, spoke, `SELECT pg_replication_origin_create('`+echo+`')`, `SELECT pg_replication_origin_session_setup('`+echo+`')`,
		`SET votr.sink = on`, `INSERT INTO ballots (candidate, whence, src) SELECT candidate, '{}', 0 FROM candidates LIMIT 3`)
	pgtest.Exec(t, spoke, `INSERT INTO votr.checkpoints (feed, source_lsn, applied_at) VALUES ('9:1', '0/1', now())`)
	if f := gather(t, regions, feeds[:1]).Feeds[0]; f.UnappliedTxns != 1 {
		t.Errorf("after an echo and an unpublished write, feed 1:0 lag = %d txns, want still 1", f.UnappliedTxns)
	}
	// Once the checkpoint covers everything, the lag is 0 while the bytes
	// the slot retains are not.
	pgtest.Exec(t, hub, `UPDATE votr.checkpoints SET source_lsn = pg_current_wal_lsn() WHERE feed = '1:0'`)
	if g := gather(t, regions, feeds[:1]).Feeds[0]; g.UnappliedTxns != 0 || g.RetainedBytes <= 0 || g.LagBytes <= 0 {
		t.Errorf("caught up: lag %d txns, retains %d bytes, %d bytes since confirmed", g.UnappliedTxns, g.RetainedBytes, g.LagBytes)
	}
	pgtest.Exec(t, hub, `UPDATE votr.checkpoints SET source_lsn = '0/1234' WHERE feed = '1:0'`)

	// A parked change keeps the report from being OK until it is replayed.
	pgtest.Exec(t, hub, `INSERT INTO votr.dead_letters (feed, source_lsn, tbl, op, reason) VALUES ('1:0', '0/1', 'totals', 'update', 'script threw')`)
	r = gather(t, regions, feeds[:1])
	if want := "feed 1:0: 1 change(s) parked in votr.dead_letters of region 0"; !strings.Contains(strings.Join(r.Problems(), "\n"), want) {
		t.Errorf("problems lack %q: %q", want, r.Problems())
	}
	pgtest.Exec(t, hub, `UPDATE votr.dead_letters SET replayed_at = now()`)
	r = gather(t, regions, feeds[:1])
	if !r.OK() {
		t.Errorf("after replay: %q", r.Problems())
	}
	var text bytes.Buffer
	_ = r.WriteText(&text)
	if !strings.Contains(text.String(), "0/1234") || !strings.Contains(text.String(), "inactive, reserved") ||
		!strings.Contains(text.String(), "SLOT RETAINS") || !strings.Contains(text.String(), "  1 txn  ") {
		t.Errorf("feed table:\n%s", text.String())
	}
	t.Logf("\n%s", text.String())
	pgtest.Exec(t, spoke, `SELECT pg_drop_replication_slot('`+slot+`')`)
}

func TestGatherRejectsBadArguments(t *testing.T) {
	tests := []struct {
		name    string
		regions []RegionTarget
		want    string
	}{
		{"no regions", nil, "no regions"},
		{"duplicate", []RegionTarget{{ID: 0}, {ID: 0}}, "region 0 is listed twice"},
		{"no hub", []RegionTarget{{ID: 1}}, "the hub (region 0) is not among"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Gather(context.Background(), tc.regions, nil, 0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Gather = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ msg, dsn, want string }{
		{"failed: postgres://u:pw123@h/db", "postgres://u:pw123@h/db", "failed: postgres://u:xxxxx@h/db"},
		{"bad p%40ss", "postgres://u:p%40ss@h/db", "bad xxxxx"},
		{"auth pw9 failed", "host=h password=pw9 dbname=x", "auth xxxxx failed"},
		{"no secret here", "postgres://u@h/db", "no secret here"},
	}
	for _, tc := range tests {
		if got := redact(tc.msg, tc.dsn); got != tc.want {
			t.Errorf("redact(%q) = %q, want %q", tc.msg, got, tc.want)
		}
	}
}
