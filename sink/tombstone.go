package sink

// The tombstone store: votr.tombstones (created by schema.Create) holds, per
// deleted key, the image of what was deleted there. Every statement on it is
// in this file.
//
// How tombstones take part in applying a feed:
//
//   - The fast-path delete deletes only rows whose key has no tombstone, and
//     records the deleted row as the key's tombstone in the same statement
//     (so in the same target transaction).
//   - The fast-path insert inserts only rows whose key has no tombstone.
//   - A change that fell short of the fast path is read back with the key's
//     tombstone (a delete always, any change whose target row is absent),
//     and the merge sees it as op.deleted: the merge decides whether a write
//     of a deleted row is older than the delete (dropped) or not (the row
//     comes back), and what the key's tombstone becomes.
//   - Tombstones are collected by CollectTombstones once every feed into the
//     region has applied the sources' commits past them (see there).

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/script"
)

// tombstoneName is how votr.tombstones names a table: schema.table, unquoted.
func (t *table) tombstoneName() string {
	return schema.QuoteLiteral(t.rel.namespace + "." + t.rel.name)
}

// tombKeyTarget renders the tombstone key of the target row t: the key
// columns' text forms, in table order.
func (t *table) tombKeyTarget() string {
	var parts []string
	for _, i := range t.allKey {
		parts = append(parts, "t."+t.colIdent(t.all[i])+"::text")
	}
	return "jsonb_build_array(" + strings.Join(parts, ", ") + ")"
}

// tombKeyUnnest renders the tombstone key of the change in u's columns
// named prefix<i> (i indexing t.cols), cast to the column type and back to
// text so it reads as the target's own text form; a value the source wrote
// with the target's own canonical output (canonicalText) is that text
// already.
func (t *table) tombKeyUnnest(prefix string) string {
	var parts []string
	for _, i := range t.allKey {
		c, src := t.all[i], t.srcOfAll[i]
		v := fmt.Sprintf("u.%s%d", prefix, src)
		if !c.asText && !(t.rel.streamed && canonicalText(c, t.rel.cols[t.srcIdx[src]])) {
			v = fmt.Sprintf("(%s::%s)::text", v, c.cast)
		}
		parts = append(parts, v)
	}
	return "jsonb_build_array(" + strings.Join(parts, ", ") + ")"
}

// canonicalText reports whether a value of source column s, as pgoutput
// sends it (the type's output function), is already what target column c
// gives as c::text (tombKeyTarget): the same type, no modifier, and a type
// whose ::text cast is its output function and whose output no setting
// changes. Not bool: its output is t/f, its ::text true/false. The
// tombstone key of every insert is matched this way: for a ballot, the
// round trip through uuid (its parse especially) cost more of a
// catch-up's apply than the insert itself.
func canonicalText(c targetColumn, s relColumn) bool {
	if c.typ != s.typ || s.typmod != noTypmod {
		return false
	}
	switch c.typ {
	case oidInt2, oidInt4, oidInt8, oidText, oidUUID:
		return true
	}
	return false
}

// noTypmod is pgoutput's type modifier -1 (none), read as unsigned.
const noTypmod = math.MaxUint32

// tombImageTarget renders the target row t as a tombstone image: a JSON
// object of column → text form (null for NULL).
func (t *table) tombImageTarget() string {
	var names, vals []string
	for _, c := range t.all {
		names = append(names, schema.QuoteLiteral(c.name))
		vals = append(vals, "t."+t.colIdent(c)+"::text")
	}
	return fmt.Sprintf("jsonb_object(ARRAY[%s]::text[], ARRAY[%s]::text[])", strings.Join(names, ", "), strings.Join(vals, ", "))
}

// tombMatch renders the join condition of the tombstone b of the change
// whose columns are u's prefix<i>.
func (t *table) tombMatch(prefix string) string {
	return fmt.Sprintf("b.tbl = %s AND b.key = %s", t.tombstoneName(), t.tombKeyUnnest(prefix))
}

// tombstoneSQL makes the table's fast-path statements tombstone-aware and
// adds the ones that read and write tombstones. buildSQL calls it last (the
// settle reads take the tombstone along themselves, see buildSQL).
func (t *table) tombstoneSQL() {
	name := t.tombstoneName()
	n := len(t.cols)
	noTombU := func(prefix string) string {
		return "NOT EXISTS (SELECT 1 FROM votr.tombstones b WHERE " + t.tombMatch(prefix) + ")"
	}

	// Inserts: a key with a tombstone falls short, is read with its
	// tombstone and merged.
	base := strings.TrimSuffix(t.sql["insert"], " ON CONFLICT DO NOTHING")
	t.sql["insert"] = base + " WHERE " + noTombU("a") + " ON CONFLICT DO NOTHING"
	t.sql["insertplain"] = base + " WHERE " + noTombU("a")

	// Deletes (the catch-up fast path): delete and record the deleted row,
	// where the key has no tombstone yet (else it falls short and the merge
	// joins the two). The affected-row count is the tombstones written.
	t.sql["delete"] = fmt.Sprintf(`WITH d AS (DELETE FROM %s AS t USING %s WHERE %s AND NOT EXISTS (SELECT 1 FROM votr.tombstones b WHERE b.tbl = %s AND b.key = %s) RETURNING %s AS k, %s AS img)
INSERT INTO votr.tombstones (tbl, key, image) SELECT %s, d.k, d.img FROM d ON CONFLICT (tbl, key) DO NOTHING`,
		t.ident, unnestFrom(1, n, "o", false), t.match(t.cols, t.cmp, "o", true), name, t.tombKeyTarget(),
		t.tombKeyTarget(), t.tombImageTarget(), name)

	// Replay (one change at a time, its target row locked): the key's
	// tombstone, locked.
	t.sql["tombread"] = fmt.Sprintf("SELECT u.i, b.xmin::text, b.image::text FROM %s JOIN votr.tombstones b ON %s FOR UPDATE OF b",
		unnestFrom(1, n, "a", true), t.tombMatch("a"))

	// Writing tombstones: key values (table key order), then (tombcas) the
	// xmin of the tombstone the merge saw (NULL: it saw none), then the
	// image (JSON text), one array each.
	m := len(t.allKey)
	var keyParts []string
	for j, i := range t.allKey {
		c := t.all[i]
		v := fmt.Sprintf("u.k%d", j)
		if !c.asText {
			v = fmt.Sprintf("(%s::%s)::text", v, c.cast)
		}
		keyParts = append(keyParts, v)
	}
	key := "jsonb_build_array(" + strings.Join(keyParts, ", ") + ")"
	names := make([]string, 0, m+2)
	for j := 0; j < m; j++ {
		names = append(names, fmt.Sprintf("k%d", j))
	}
	// Replay holds the tombstone's lock: a plain upsert.
	t.sql["tombput"] = fmt.Sprintf(`INSERT INTO votr.tombstones AS b (tbl, key, image) SELECT %s, %s, u.img::jsonb FROM %s
ON CONFLICT (tbl, key) DO UPDATE SET image = EXCLUDED.image, deleted_at = now()`,
		name, key, renamed(unnestFrom(1, m+1, "z", false), append(names[:m:m], "img"), false))
	// The settle loop's compare-and-set: a tombstone replaces the one the
	// merge saw only if that is still there unchanged (same xmin), and is
	// created only if there still is none; the others are read and merged
	// again (a concurrent sink or client deleted the key meanwhile).
	t.sql["tombcas"] = fmt.Sprintf(`WITH u AS (SELECT * FROM %s),
up AS (UPDATE votr.tombstones b SET image = u.img::jsonb, deleted_at = now() FROM u
       WHERE u.x IS NOT NULL AND b.tbl = %s AND b.key = %s AND b.xmin = u.x::xid RETURNING u.i),
ins AS (INSERT INTO votr.tombstones AS b (tbl, key, image) SELECT %s, %s, u.img::jsonb FROM u WHERE u.x IS NULL
        ON CONFLICT (tbl, key) DO NOTHING RETURNING b.key)
SELECT i FROM up UNION ALL SELECT u.i FROM u WHERE u.x IS NULL AND %s`,
		renamed(unnestFrom(1, m+2, "z", true), append(names[:m:m], "x", "img"), true),
		name, key, name, key, inReturned(key, "SELECT ins.key FROM ins"))
}

// tombWrite is one tombstone a merge result records.
type tombWrite struct {
	key   [][]byte // key values in table.allKey order, text
	image []byte   // JSON object column → text form
}

// textImage is the tombstone image of a target row read as text values in
// table.all order.
func textImage(t *table, vals [][]byte) []byte {
	img := make(map[string]*string, len(t.all))
	for i, col := range t.all {
		if v := vals[i]; v != nil {
			s := string(v)
			img[col.name] = &s
		} else {
			img[col.name] = nil
		}
	}
	b, _ := json.Marshal(img) // strings and nulls only: cannot fail
	return b
}

// keyMoved reports whether an update changes its row's primary key (the
// source sent the old key, and it differs from the new row's).
func keyMoved(t *table, e *entry) bool {
	if e.op != opUpdate || e.oldSeg == nil || e.old < 0 || e.newSeg == nil || e.new < 0 {
		return false
	}
	for _, k := range t.keys {
		o := e.oldSeg.fields[e.old+int32(t.srcIdx[k])]
		n := e.newSeg.fields[e.new+int32(t.srcIdx[k])]
		if o.kind != n.kind || string(e.oldSeg.value(o)) != string(e.newSeg.value(n)) {
			return true
		}
	}
	return false
}

// tombstoneRow decodes the conflict's tombstone for a script; nil if none.
func (c *conflictRow) tombstoneRow() (script.Row, error) {
	if c.tomb == nil {
		return nil, nil
	}
	var img map[string]*string
	if err := json.Unmarshal(c.tomb, &img); err != nil {
		return nil, fmt.Errorf("tombstone of %s: %w", c.t.ident, err)
	}
	r := make(script.Row, len(c.t.all))
	for _, col := range c.t.all {
		v := img[col.name]
		if v == nil {
			r[col.name] = nil
			continue
		}
		d, err := decodeValue(col.typ, []byte(*v))
		if err != nil {
			return nil, fmt.Errorf("tombstone of %s, column %s: %w", c.t.ident, col.name, err)
		}
		r[col.name] = d
	}
	return r, nil
}

// tombstoneImage encodes a row (a script's or a decoded one) as a
// tombstone image.
func tombstoneImage(t *table, r script.Row) ([]byte, error) {
	img := make(map[string]*string, len(t.all))
	for _, col := range t.all {
		text, ok, err := encodeValue(col.typ, r[col.name])
		if err != nil {
			return nil, fmt.Errorf("tombstone column %s: %w", col.name, err)
		}
		if ok {
			s := string(text)
			img[col.name] = &s
		} else {
			img[col.name] = nil
		}
	}
	return json.Marshal(img)
}

// conflictKey is the key of a conflict's row in table.allKey order: the
// target row's when it was found, else the change's.
func conflictKey(c *conflictRow) [][]byte {
	t, e := c.t, c.e
	key := make([][]byte, len(t.allKey))
	for j, i := range t.allKey {
		if c.found {
			key[j] = c.target[i]
			continue
		}
		f := e.keySeg.fields[e.key+int32(t.srcIdx[t.srcOfAll[i]])]
		key[j] = e.keySeg.value(f)
	}
	return key
}

// queueTombstones adds w's tombstones to the batch b; it reports how many
// statements it queued. A key written twice keeps its last image (one
// statement cannot upsert a row twice).
func (a *applier) queueTombstones(ctx context.Context, b *pgconn.Batch, t *table, w *tableWrites) (int, error) {
	if len(w.tombs) == 0 {
		return 0, nil
	}
	last := map[string]int{}
	for i, tw := range w.tombs {
		k, _ := json.Marshal(tw.key)
		last[string(k)] = i
	}
	var args [][]byte
	for j := 0; j <= len(t.allKey); j++ {
		arr := a.array()
		for i, tw := range w.tombs {
			k, _ := json.Marshal(tw.key)
			if last[string(k)] != i {
				continue
			}
			if j < len(t.allKey) {
				arr.add(tw.key[j])
			} else {
				arr.add(tw.image)
			}
		}
		args = append(args, arr.bytes())
	}
	name, err := a.stmts.name(ctx, t.sql["tombput"])
	if err != nil {
		return 0, err
	}
	b.ExecPrepared(name, args, formats(len(args)), nil)
	return 1, nil
}

// DefaultTombstoneMargin is Options.TombstoneMargin's default.
const DefaultTombstoneMargin = 10 * time.Minute

// collectTombstones runs CollectTombstones between groups (no target
// transaction open) once Options.TombstoneEvery has passed since the last
// run. Every sink into a region does so; the deletes are idempotent.
func (s *Sink) collectTombstones(ctx context.Context, a *applier) error {
	if a.inTxn || time.Since(a.tombAt) < s.opts.TombstoneEvery {
		return nil
	}
	a.tombAt = time.Now()
	n, err := CollectTombstones(ctx, a.pg, s.opts.TombstoneMargin)
	if isLockError(err) {
		// Other writers hold some of the tombstones: the next run
		// collects them (not worth failing the session for).
		s.log.Debug("tombstone collection deferred", "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.st.TombstonesCollected += n
	s.st.TombstoneRuns++
	s.mu.Unlock()
	if n > 0 {
		s.log.Info("tombstones collected", "count", n)
	}
	return nil
}

// CollectTombstones deletes the tombstones of the region whose database
// db is connected to that no change still travelling can need, and
// returns how many.
//
// "Every feed into the region has applied past the tombstone" means: the
// region's votr.checkpoints has a row per inbound feed (apply creates
// them), each row's source_commit is the commit time, at that feed's
// source, of the last source transaction the feed committed here (written
// in the same target transaction), and the horizon is the smallest of them
// — no horizon at all while any feed has committed nothing. A tombstone
// written (or last rewritten) at deleted_at goes when deleted_at < horizon
// - margin and no dead letter of its table waits for `votr replay`.
//
// Why that suffices: a write the delete had seen committed, on every path
// to this region, before the delete reached the region that passed it on;
// each feed delivers its source's commits in order, so once a feed has
// applied a commit from after the delete (plus the margin, for the
// servers' clock skew) the writes before it on that path have arrived. A
// feed that sits idle holds every tombstone (conservative: nothing is
// removed that might still be needed), and so does a parked change, which
// `votr replay` may bring back any time.
func CollectTombstones(ctx context.Context, db *pgconn.PgConn, margin time.Duration) (int64, error) {
	tag, err := db.ExecParams(ctx, collectTombstonesSQL,
		[][]byte{[]byte(fmt.Sprint(margin.Seconds()))}, nil, nil, nil).Close()
	if err != nil {
		return 0, fmt.Errorf("collect tombstones: %w", err)
	}
	return tag.RowsAffected(), nil
}

// collectTombstonesSQL deletes what CollectTombstones may; $1 is the
// margin in seconds.
const collectTombstonesSQL = `
		WITH horizon AS (
			SELECT CASE WHEN count(*) > 0 AND count(*) = count(source_commit) THEN min(source_commit) END AS at
			FROM votr.checkpoints),
		-- The tables with parked changes, found once (not once per tombstone).
		parked AS MATERIALIZED (SELECT DISTINCT tbl FROM votr.dead_letters WHERE replayed_at IS NULL)
		DELETE FROM votr.tombstones b USING horizon h
		WHERE b.deleted_at < h.at - make_interval(secs => $1::float8)
		  AND NOT EXISTS (SELECT 1 FROM parked d WHERE d.tbl IN (b.tbl, split_part(b.tbl, '.', 2)))`
