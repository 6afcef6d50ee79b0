package sink

import (
	"context"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
)

// catchUp runs the feed cfg until it has applied its source's current WAL,
// then stops it.
func catchUp(t *testing.T, cfg Config) Status {
	t.Helper()
	r := start(t, cfg)
	waitCaughtUp(t, r, cfg.SourceDSN, time.Minute)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	return r.s.Status()
}

// candidatesDump renders a region's candidates rows canonically.
func candidatesDump(t *testing.T, dsn string) string {
	t.Helper()
	conn := connect(t, dsn)
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(context.Background(),
		`SELECT COALESCE(string_agg(c::text, E'\n' ORDER BY candidate), '') FROM candidates c`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// A delete and a late replay of the insert it deleted reach a region in
// either order (region 2 deleted a row it had from region 1; the target
// hears from both): the row stays deleted in both targets. An update made
// in region 1 that region 2's delete had not seen wins in both orders
// (observed-remove). Before tombstones, the delete-first order brought the
// deleted row back.
func TestDeleteAndLateInsertConverge(t *testing.T) {
	srv := pgtest.Start(t)
	a := newRegion(t, srv, 1)  // writes
	b := newRegion(t, srv, 2)  // gets a's rows, deletes them
	c1 := newRegion(t, srv, 0) // hears b first, then a
	c2 := newRegion(t, srv, 3) // hears a first, then b
	for _, s := range []region{a, b} {
		for _, d := range []int{c1.id, c2.id} {
			createSlot(t, s, d)
		}
	}
	createSlot(t, a, b.id)
	prog := votrScript(t)
	opts := options(200, 10000, 1)

	const gone = "'00000000-0000-0000-0000-0000000000d1'" // deleted, then its insert replayed late
	const kept = "'00000000-0000-0000-0000-0000000000d2'" // deleted in b, concurrently updated in a
	pgtest.Exec(t, a.dsn,
		`INSERT INTO candidates (candidate, name, mood) VALUES (`+gone+`, 'Gone', 'brief'), (`+kept+`, 'Kept', 'stubborn')`)
	catchUp(t, feedConfig(t, a, b, prog, opts))
	// Concurrent: a updates kept, b deletes both rows it has.
	pgtest.Exec(t, a.dsn, `UPDATE candidates SET mood = 'updated', version = version + 1 WHERE candidate = `+kept)
	pgtest.Exec(t, b.dsn, `DELETE FROM candidates WHERE candidate IN (`+gone+`, `+kept+`)`)

	for _, order := range []struct {
		target region
		first  region
		second region
	}{{c1, b, a}, {c2, a, b}} {
		catchUp(t, feedConfig(t, order.first, order.target, prog, opts))
		catchUp(t, feedConfig(t, order.second, order.target, prog, opts))
		if n := queryInt(t, order.target.dsn, `SELECT count(*) FROM candidates WHERE candidate = `+gone); n != 0 {
			t.Errorf("region %d (heard %d first): the deleted row came back", order.target.id, order.first.id)
		}
		if m := queryInt(t, order.target.dsn, `SELECT count(*) FROM candidates WHERE candidate = `+kept+` AND mood = 'updated'`); m != 1 {
			t.Errorf("region %d (heard %d first): the update the delete had not seen was lost", order.target.id, order.first.id)
		}
		if n := queryInt(t, order.target.dsn, `SELECT count(*) FROM votr.tombstones WHERE tbl = 'public.candidates'`); n != 2 {
			t.Errorf("region %d: %d tombstones, want 2 (one per deleted key)", order.target.id, n)
		}
	}
	if x, y := candidatesDump(t, c1.dsn), candidatesDump(t, c2.dsn); x != y {
		t.Fatalf("the two orders end differently:\n%s\n---\n%s", x, y)
	}
}

// With the built-in versionColumn rule (no merge function) too, a delete
// and a late insert converge in either order, and a conflicting update
// that moved the primary key leaves no row at the old key.
func TestBuiltinRuleDeletesAndKeyMoves(t *testing.T) {
	srv := pgtest.Start(t)
	a := newRegion(t, srv, 1)
	b := newRegion(t, srv, 2)
	c1 := newRegion(t, srv, 0)
	c2 := newRegion(t, srv, 3)
	for _, s := range []region{a, b} {
		for _, d := range []int{c1.id, c2.id} {
			createSlot(t, s, d)
		}
	}
	createSlot(t, a, b.id)
	prog := compileScript(t, `export const tables = { candidates: { versionColumn: "version" } };`)
	opts := options(200, 10000, 1)
	const gone = "'00000000-0000-0000-0000-0000000000e1'"
	pgtest.Exec(t, a.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES (`+gone+`, 'Gone', 'brief')`)
	catchUp(t, feedConfig(t, a, b, prog, opts))
	pgtest.Exec(t, b.dsn, `DELETE FROM candidates WHERE candidate = `+gone)
	for _, order := range [][3]region{{c1, b, a}, {c2, a, b}} {
		catchUp(t, feedConfig(t, order[1], order[0], prog, opts))
		catchUp(t, feedConfig(t, order[2], order[0], prog, opts))
		if n := queryInt(t, order[0].dsn, `SELECT count(*) FROM candidates WHERE candidate = `+gone); n != 0 {
			t.Errorf("region %d (heard %d first): the deleted row came back", order[0].id, order[1].id)
		}
	}

	// Key move: the target's row differs from the update's before-image
	// (a conflict), and the update changes the key.
	const first = "'00000000-0000-0000-0000-0000000000e2'"
	const moved = "'00000000-0000-0000-0000-0000000000e3'"
	pgtest.Exec(t, a.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES (`+first+`, 'Mover', 'restless')`)
	catchUp(t, feedConfig(t, a, c1, prog, opts))
	pgtest.Exec(t, c1.dsn, `UPDATE candidates SET mood = 'local edit' WHERE candidate = `+first)
	pgtest.Exec(t, a.dsn, `UPDATE candidates SET candidate = `+moved+`, version = version + 5 WHERE candidate = `+first)
	st := catchUp(t, feedConfig(t, a, c1, prog, opts))
	if st.Conflicts == 0 {
		t.Fatalf("status %+v: the key move did not conflict; the test does not exercise the merge path", st)
	}
	if n := queryInt(t, c1.dsn, `SELECT count(*) FROM candidates WHERE candidate = `+first); n != 0 {
		t.Errorf("the row at the old key is still there after a conflicting key move")
	}
	if n := queryInt(t, c1.dsn, `SELECT count(*) FROM candidates WHERE candidate = `+moved); n != 1 {
		t.Errorf("the row at the new key is missing after a conflicting key move")
	}
}

// Without REPLICA IDENTITY FULL, an update that leaves a TOASTed value
// unchanged does not send it: the target keeps its own value (as
// PostgreSQL's apply does) instead of the feed stopping.
func TestToastedValueDefaultIdentity(t *testing.T) {
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 1)
	dst := newRegion(t, srv, 0)
	for _, r := range []region{src, dst} {
		pgtest.Exec(t, r.dsn,
			`CREATE TABLE docs (id INT PRIMARY KEY, body TEXT NOT NULL, note TEXT NOT NULL)`,
			`ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL`)
	}
	pgtest.Exec(t, src.dsn, `ALTER PUBLICATION votr ADD TABLE docs`)
	createSlot(t, src, dst.id)
	big := `(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)`
	pgtest.Exec(t, src.dsn,
		`INSERT INTO docs VALUES (1, `+big+`, 'first'), (2, `+big+`, 'first')`)
	pgtest.Exec(t, src.dsn, `UPDATE docs SET note = 'second' WHERE id = 1`)
	pgtest.Exec(t, src.dsn, "BEGIN", `UPDATE docs SET note = 'third' WHERE id = 2`, `UPDATE docs SET note = 'fourth' WHERE id = 2`, "COMMIT")
	st := catchUp(t, feedConfig(t, src, dst, votrScript(t), options(200, 10000, 1)))
	q := `SELECT string_agg(id || ':' || md5(body) || ':' || note, ',' ORDER BY id) FROM docs`
	var got, want string
	for _, x := range []struct {
		dsn string
		out *string
	}{{dst.dsn, &got}, {src.dsn, &want}} {
		conn := connect(t, x.dsn)
		if err := conn.QueryRow(context.Background(), q).Scan(x.out); err != nil {
			t.Fatal(err)
		}
		conn.Close(context.Background())
	}
	if got != want {
		t.Fatalf("target docs %s, want %s (status %+v)", got, want, st)
	}
}

// TRUNCATE empties the table in the region it reaches, rows that region
// wrote itself included; tombstones are neither made nor removed.
func TestTruncateReplicates(t *testing.T) {
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 1)
	dst := newRegion(t, srv, 0)
	createSlot(t, src, dst.id)
	prog := votrScript(t)
	const x = "'00000000-0000-0000-0000-0000000000f1'"
	pgtest.Exec(t, dst.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES (`+x+`, 'Local', 'mine')`)
	pgtest.Exec(t, dst.dsn, `INSERT INTO votr.tombstones (tbl, key, image) VALUES ('public.candidates', '["k"]', '{}')`)
	pgtest.Exec(t, src.dsn, `TRUNCATE ballots, totals, candidates`)
	catchUp(t, feedConfig(t, src, dst, prog, options(200, 10000, 1)))
	for _, tbl := range []string{"candidates", "ballots", "totals"} {
		if n := queryInt(t, dst.dsn, `SELECT count(*) FROM `+tbl); n != 0 {
			t.Errorf("%s has %d rows after a replicated TRUNCATE", tbl, n)
		}
	}
	if n := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.tombstones`); n != 1 {
		t.Errorf("%d tombstones after TRUNCATE, want the 1 there before", n)
	}
}

// CollectTombstones removes a tombstone only once every feed into the
// region has applied a source commit past it plus the margin, and never
// while a dead letter of its table waits.
func TestCollectTombstones(t *testing.T) {
	srv := pgtest.Start(t)
	r := newRegion(t, srv, 0)
	ctx := context.Background()
	conn := connect(t, r.dsn)
	defer conn.Close(ctx)
	pgtest.Exec(t, r.dsn,
		`INSERT INTO votr.tombstones (tbl, key, image, deleted_at) VALUES
			('public.candidates', '["old"]', '{}', now() - interval '2 hours'),
			('public.candidates', '["new"]', '{}', now())`,
		`INSERT INTO votr.checkpoints (feed, source_commit) VALUES ('1:0', now() - interval '1 hour'), ('2:0', NULL)`)
	collect := func() int64 {
		n, err := CollectTombstones(ctx, conn, 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := collect(); n != 0 {
		t.Fatalf("collected %d tombstones while feed 2:0 has applied nothing", n)
	}
	pgtest.Exec(t, r.dsn, `UPDATE votr.checkpoints SET source_commit = now() - interval '1 hour' WHERE feed = '2:0'`,
		`INSERT INTO votr.dead_letters (feed, source_lsn, tbl, op, reason) VALUES ('1:0', '0/1', 'candidates', 'update', 'test')`)
	if n := collect(); n != 0 {
		t.Fatalf("collected %d tombstones while a dead letter of the table waits", n)
	}
	pgtest.Exec(t, r.dsn, `UPDATE votr.dead_letters SET replayed_at = now()`)
	if n := collect(); n != 1 {
		t.Fatalf("collected %d tombstones, want 1 (the one older than every feed's checkpoint minus the margin)", n)
	}
	if n := queryInt(t, r.dsn, `SELECT count(*) FROM votr.tombstones WHERE key = '["new"]'`); n != 1 {
		t.Fatalf("the recent tombstone was collected")
	}
}
