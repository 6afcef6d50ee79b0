package sink

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/schema"
)

// schemaError is a source table the target cannot take: retrying does not help.
type schemaError struct{ msg string }

func (e *schemaError) Error() string { return e.msg }

// targetColumn is a column of the target table.
type targetColumn struct {
	name   string // unquoted
	cast   string // type as written in a cast, e.g. "uuid", "character varying(20)"
	typ    uint32
	key    bool
	asText bool // the type has no equality operator: compare text forms
}

// table is how one source relation (as last described) is applied to its
// target table: which source columns go where, and the statements.
type table struct {
	rel    *relation
	name   string         // the name a script knows the table by
	ident  string         // quoted, schema-qualified target name
	rank   int            // apply order: parents first
	cols   []targetColumn // target columns of the source columns, in source order
	srcIdx []int          // source column index of cols[i]
	keys   []int          // indexes in cols of the primary key columns
	cmp    []int          // indexes in cols compared with the old image
	every  []int          // every index in cols: what a new image is compared on
	// textCmp[i]: the sink compares column cols[i] with the target's by
	// text itself (textDecides); the read statements compare only the
	// others.
	textCmp []bool
	allOf   []int          // allOf[i] is the index in all of cols[i]
	all     []targetColumn // every writable target column, in target order
	allKey  []int          // indexes in all of the primary key columns
	// srcOfAll[i] is the index in cols of all[i], -1 when the source lacks it.
	srcOfAll []int

	sql map[string]string // statement kind → SQL
}

// loadTable reads the target's catalog for rel's table.
func loadTable(ctx context.Context, conn *pgx.Conn, rel *relation) (*table, error) {
	all, err := readColumns(ctx, conn, rel.namespace, rel.name)
	if err != nil {
		return nil, err
	}
	if len(all) == 0 {
		return nil, &schemaError{fmt.Sprintf("table %s.%s is replicated by the source but does not exist in the target; run `votr apply` to create the schema", rel.namespace, rel.name)}
	}
	return newTable(rel, all)
}

// readColumns reads the writable columns of a target table, in table
// order; none when the table does not exist.
func readColumns(ctx context.Context, conn *pgx.Conn, namespace, name string) ([]targetColumn, error) {
	qname := pgx.Identifier{namespace, name}.Sanitize()
	rows, err := conn.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid,
		       COALESCE(a.attnum = ANY(i.indkey), false),
		       NOT EXISTS (SELECT 1 FROM pg_operator o WHERE o.oprname = '=' AND o.oprleft = a.atttypid AND o.oprright = a.atttypid)
		FROM pg_attribute a
		LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
		WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		ORDER BY a.attnum`, qname)
	if err != nil {
		return nil, fmt.Errorf("read catalog of %s: %w", qname, err)
	}
	var all []targetColumn
	for rows.Next() {
		var c targetColumn
		if err := rows.Scan(&c.name, &c.cast, &c.typ, &c.key, &c.asText); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read catalog of %s: %w", qname, err)
		}
		all = append(all, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read catalog of %s: %w", qname, err)
	}
	return all, nil
}

// newTable maps rel's columns onto the target columns all and builds the
// table's statements.
func newTable(rel *relation, all []targetColumn) (*table, error) {
	qname := pgx.Identifier{rel.namespace, rel.name}.Sanitize()
	t := &table{rel: rel, ident: qname, all: all, sql: map[string]string{}}
	t.name = rel.name
	if rel.namespace != "public" {
		t.name = rel.namespace + "." + rel.name
	}
	t.rank = len(schema.Tables)
	if rel.namespace == "public" {
		if i := slices.Index(schema.Tables, rel.name); i >= 0 {
			t.rank = i
		}
	}
	byName := map[string]int{}
	for i, c := range t.all {
		byName[c.name] = i
		if c.key {
			t.allKey = append(t.allKey, i)
		}
	}
	if len(t.allKey) == 0 {
		return nil, &schemaError{fmt.Sprintf("target table %s has no primary key; the sink needs one to find rows", qname)}
	}
	inCols := map[int]int{}
	for si, sc := range rel.cols {
		ti, ok := byName[sc.name]
		if !ok {
			return nil, &schemaError{fmt.Sprintf("column %s of %s.%s on the source is missing in the target; make the schemas match", sc.name, rel.namespace, rel.name)}
		}
		inCols[ti] = len(t.cols)
		t.cols = append(t.cols, t.all[ti])
		t.srcIdx = append(t.srcIdx, si)
		t.every = append(t.every, len(t.cols)-1)
		t.allOf = append(t.allOf, ti)
		t.textCmp = append(t.textCmp, rel.streamed && textDecides(t.all[ti], sc))
	}
	t.srcOfAll = make([]int, len(t.all))
	for i := range t.all {
		t.srcOfAll[i] = -1
		if ci, ok := inCols[i]; ok {
			t.srcOfAll[i] = ci
		}
	}
	for i, c := range t.cols {
		if c.key {
			t.keys = append(t.keys, i)
		}
	}
	if len(t.keys) != len(t.allKey) {
		return nil, &schemaError{fmt.Sprintf("the source does not send every primary key column of %s", qname)}
	}
	if rel.identity == identityFull {
		for i := range t.cols {
			t.cmp = append(t.cmp, i)
		}
	} else {
		// Without REPLICA IDENTITY FULL the old row carries only its key:
		// changes cannot be checked against it and overwrite the target.
		t.cmp = t.keys
	}
	t.buildSQL()
	return t, nil
}

func (t *table) colIdent(c targetColumn) string { return pgx.Identifier{c.name}.Sanitize() }

// unnestFrom renders "unnest($o+1::text[], ...) AS u(p1, ..., pn)" plus an
// optional ordinality column i.
func unnestFrom(first, n int, prefix string, ordinality bool) string {
	var b strings.Builder
	b.WriteString("unnest(")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "$%d::text[]", first+i)
	}
	b.WriteString(")")
	if ordinality {
		b.WriteString(" WITH ORDINALITY")
	}
	b.WriteString(" AS u(")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s%d", prefix, i)
	}
	if ordinality {
		b.WriteString(", i")
	}
	b.WriteString(")")
	return b.String()
}

// match renders "t.c = u.pX::type" conditions for the given columns.
func (t *table) match(cols []targetColumn, idx []int, prefix string, nullSafe bool) string {
	var parts []string
	for _, i := range idx {
		c := cols[i]
		v := fmt.Sprintf("u.%s%d::%s", prefix, i, c.cast)
		lhs := "t." + t.colIdent(c)
		if c.asText {
			lhs += "::text"
			v = fmt.Sprintf("u.%s%d", prefix, i)
		}
		if nullSafe && !c.key {
			parts = append(parts, lhs+" IS NOT DISTINCT FROM "+v)
		} else {
			parts = append(parts, lhs+" = "+v)
		}
	}
	return strings.Join(parts, " AND ")
}

// matchSQL renders match for the columns of idx that the sink does not
// compare itself (textCmp), "true" when none is left: the read statements'
// image comparisons, completed in Go (sameText).
func (t *table) matchSQL(idx []int, prefix string) string {
	var left []int
	for _, i := range idx {
		if !t.textCmp[i] {
			left = append(left, i)
		}
	}
	if len(left) == 0 {
		return "true"
	}
	return t.match(t.cols, left, prefix, true)
}

// textDecides reports whether equal text forms of source column s (as
// pgoutput sends them) and of target column c (c::text) mean equal values,
// so that the sink may compare them itself: canonicalText's types; json,
// which has no equality but its text; and jsonb, whose output is a function
// of its value. (Two jsonb values can be equal with different texts, a
// number's scale: 1.0 and 1. The sink then sees a difference and merges.)
func textDecides(c targetColumn, s relColumn) bool {
	if canonicalText(c, s) {
		return true
	}
	return c.typ == s.typ && s.typmod == noTypmod && (c.typ == oidJSON || c.typ == oidJSONB)
}

// keepKey drops the primary key columns' assignments from sets (sets[i]
// assigns cols[i]), unless nothing else is left: the sink's updates never
// move a key (a moved key is a delete and an insert), and an UPDATE that
// names a key column in its SET list, even to assign the same value, locks
// the row FOR UPDATE before a row trigger (votr_stamp) is called: that
// lock waits for the FOR KEY SHARE lock a foreign key check takes, so a
// candidate's update waited for every open transaction inserting a ballot
// for it, and a worker holding that lock while waiting for a totals row
// the sink held made a lock cycle.
func keepKey(cols []targetColumn, sets []string) []string {
	var kept []string
	for i, c := range cols {
		if !c.key {
			kept = append(kept, sets[i])
		}
	}
	if len(kept) == 0 {
		return sets
	}
	return kept
}

// renamed gives an unnestFrom clause other column names.
func renamed(from string, names []string, ordinality bool) string {
	if ordinality {
		names = append(names[:len(names):len(names)], "i")
	}
	return from[:strings.Index(from, " AS u(")] + " AS u(" + strings.Join(names, ", ") + ")"
}

func (t *table) buildSQL() {
	n := len(t.cols)
	var names, casts, sets []string
	for i, c := range t.cols {
		names = append(names, t.colIdent(c))
		casts = append(casts, fmt.Sprintf("u.a%d::%s", i, c.cast))
		sets = append(sets, fmt.Sprintf("%s = u.n%d::%s", t.colIdent(c), i, c.cast))
	}
	sets = keepKey(t.cols, sets)
	// The fast path: rows whose target matches the old image (or, for an
	// insert, that are absent) are written; the others are counted by the
	// affected-rows shortfall and looked at afterwards.
	t.sql["insert"] = fmt.Sprintf("INSERT INTO %s AS t (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s ON CONFLICT DO NOTHING",
		t.ident, strings.Join(names, ", "), strings.Join(casts, ", "), unnestFrom(1, n, "a", false))
	// Without ON CONFLICT an insert skips the speculative insertion (an
	// extra index probe and WAL record per row); a conflict then fails the
	// whole statement, and the group is applied again with the above.
	t.sql["insertplain"] = strings.TrimSuffix(t.sql["insert"], " ON CONFLICT DO NOTHING")
	oldNew := unnestFrom(1, 2*n, "x", false)
	// unnestFrom names the columns x0..x2n-1; rename old to o and new to n.
	var on []string
	for i := 0; i < n; i++ {
		on = append(on, fmt.Sprintf("o%d", i))
	}
	for i := 0; i < n; i++ {
		on = append(on, fmt.Sprintf("n%d", i))
	}
	oldNew = renamed(oldNew, on, false)
	t.sql["update"] = fmt.Sprintf("UPDATE %s AS t SET %s FROM %s WHERE %s",
		t.ident, strings.Join(sets, ", "), oldNew, t.match(t.cols, t.cmp, "o", true))
	t.sql["delete"] = fmt.Sprintf("DELETE FROM %s AS t USING %s WHERE %s",
		t.ident, unnestFrom(1, n, "o", false), t.match(t.cols, t.cmp, "o", true))

	// Reading targets: one statement (one snapshot) per table and kind
	// returns, for every entry (u.i), whether the target row exists (its
	// xmin, NULL when absent), whether it already holds the new image,
	// whether it matches the old image, and its values as text. Nothing is
	// locked: the writes that follow are compare-and-set on xmin, and an
	// entry whose row changed meanwhile is read and decided again.
	var sel []string
	for _, c := range t.all {
		sel = append(sel, "t."+t.colIdent(c)+"::text")
	}
	cols := strings.Join(sel, ", ")
	// The key's tombstone (its xmin and image, NULL when none) comes along
	// in the same snapshot (tombstone.go).
	read := func(from, keyPrefix, sameNew, sameOld string) string {
		return fmt.Sprintf("SELECT u.i, t.xmin::text, COALESCE(%s, false), COALESCE(%s, false), b.xmin::text, b.image::text, %s FROM %s LEFT JOIN %s AS t ON %s LEFT JOIN votr.tombstones b ON %s",
			sameNew, sameOld, cols, from, t.ident, t.match(t.cols, t.keys, keyPrefix, false), t.tombMatch(keyPrefix))
	}
	// Inserts: the new image in a*.
	t.sql["readins"] = read(unnestFrom(1, n, "a", true), "a", t.matchSQL(t.every, "a"), "false")
	// Updates: the old image in o*, the new one in n*; the row is found by
	// its old key.
	t.sql["readupd"] = read(renamed(unnestFrom(1, 2*n, "x", true), on, true), "o",
		t.matchSQL(t.every, "n"), t.matchSQL(t.cmp, "o"))
	// Deletes: the old image in o*.
	t.sql["readdel"] = read(unnestFrom(1, n, "o", true), "o", "false", t.matchSQL(t.cmp, "o"))
	// Replay (one change at a time): the target row at the key, locked.
	t.sql["lockpresent"] = fmt.Sprintf("SELECT u.i, %s FROM %s JOIN %s AS t ON %s FOR NO KEY UPDATE OF t",
		cols, unnestFrom(1, n, "a", true), t.ident, t.match(t.cols, t.keys, "a", false))

	// Writing merge results: deletes by key (key arrays in target-key
	// order) and upserts of whole rows (all target columns).
	keyIdx := make([]int, len(t.allKey))
	keyCols := make([]targetColumn, len(t.allKey))
	for j, i := range t.allKey {
		keyIdx[j] = j
		keyCols[j] = t.all[i]
	}
	t.sql["deletekey"] = fmt.Sprintf("DELETE FROM %s AS t USING %s WHERE %s",
		t.ident, unnestFrom(1, len(keyCols), "k", false), t.match(keyCols, keyIdx, "k", false))
	var allNames, allCasts, excl, keyNames []string
	for i, c := range t.all {
		allNames = append(allNames, t.colIdent(c))
		allCasts = append(allCasts, fmt.Sprintf("u.a%d::%s", i, c.cast))
		if !c.key {
			excl = append(excl, fmt.Sprintf("%s = EXCLUDED.%s", t.colIdent(c), t.colIdent(c)))
		} else {
			keyNames = append(keyNames, t.colIdent(c))
		}
	}
	conflict := "DO NOTHING"
	if len(excl) > 0 {
		conflict = "DO UPDATE SET " + strings.Join(excl, ", ")
	}
	t.sql["upsert"] = fmt.Sprintf("INSERT INTO %s AS t (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s ON CONFLICT (%s) %s",
		t.ident, strings.Join(allNames, ", "), strings.Join(allCasts, ", "), unnestFrom(1, len(t.all), "a", false),
		strings.Join(keyNames, ", "), conflict)

	// Writes (see settle): keys in k* (target-key order), the xmin read in
	// x, whole rows in a* (table order). The rows of a table are first
	// locked in key order, so every sink (and every client that updates in
	// key order) takes them in one order; the writes then land only where
	// the row is still the version the merge saw.
	keyFrom := unnestFrom(1, len(keyCols), "k", false)
	var keyOrder []string
	for _, c := range keyCols {
		keyOrder = append(keyOrder, "t."+t.colIdent(c))
	}
	t.sql["lock"] = fmt.Sprintf("SELECT 1 FROM %s AS t JOIN %s ON %s ORDER BY %s FOR NO KEY UPDATE OF t",
		t.ident, keyFrom, t.match(keyCols, keyIdx, "k", false), strings.Join(keyOrder, ", "))
	// flush takes the same lock before it reads the rows of a group's
	// updates and deletes, with their old keys (encodeKeys).
	var kxNames []string
	for j := range keyCols {
		kxNames = append(kxNames, fmt.Sprintf("k%d", j))
	}
	kxNames = append(kxNames, "x")
	var setAll []string
	for i, c := range t.all {
		setAll = append(setAll, fmt.Sprintf("%s = u.a%d::%s", t.colIdent(c), i, c.cast))
	}
	setAll = keepKey(t.all, setAll)
	var kxaNames []string
	kxaNames = append(kxaNames, kxNames...)
	for i := range t.all {
		kxaNames = append(kxaNames, fmt.Sprintf("a%d", i))
	}
	t.sql["cas"] = fmt.Sprintf("UPDATE %s AS t SET %s FROM %s WHERE %s AND t.xmin = u.x::xid RETURNING u.i",
		t.ident, strings.Join(setAll, ", "), renamed(unnestFrom(1, len(kxaNames), "z", true), kxaNames, true),
		t.match(keyCols, keyIdx, "k", false))
	// The compare-and-set of a write round that commits (see settle): it
	// fails the batch, before its COMMIT, unless every row was written.
	t.sql["casstrict"] = "WITH w AS (" + t.sql["cas"] + ") SELECT 1 / (count(*) = cardinality($1::text[]))::int FROM w"
	t.sql["casdel"] = fmt.Sprintf("DELETE FROM %s AS t USING %s WHERE %s AND t.xmin = u.x::xid RETURNING u.i",
		t.ident, renamed(unnestFrom(1, len(kxNames), "z", true), kxNames, true), t.match(keyCols, keyIdx, "k", false))
	// Rows a merge creates: inserted unless someone inserted the key first
	// (that entry is then settled again against their row, never
	// overwritten). RETURNING cannot name the input row, so the inserted
	// keys are matched back to it: through a hashed sub-plan (see
	// inReturned), not a join, which the apply session's generic plan
	// (hash and merge joins off, CTE estimated at a row) would make a nested
	// loop over the returned rows for every input row.
	var retKeys, inKeys, outKeys []string
	for j, i := range t.allKey {
		c := t.all[i]
		retKeys = append(retKeys, fmt.Sprintf("t.%s AS k%d", t.colIdent(c), j))
		if c.asText {
			inKeys = append(inKeys, fmt.Sprintf("u.a%d", i))
			outKeys = append(outKeys, fmt.Sprintf("ins.k%d::text", j))
		} else {
			inKeys = append(inKeys, fmt.Sprintf("u.a%d::%s", i, c.cast))
			outKeys = append(outKeys, fmt.Sprintf("ins.k%d", j))
		}
	}
	t.sql["insnew"] = fmt.Sprintf("WITH ins AS (INSERT INTO %s AS t (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s ON CONFLICT DO NOTHING RETURNING %s) SELECT u.i FROM %s WHERE %s",
		t.ident, strings.Join(allNames, ", "), strings.Join(allCasts, ", "), unnestFrom(1, len(t.all), "a", false),
		strings.Join(retKeys, ", "), unnestFrom(1, len(t.all), "a", true),
		inReturned("("+strings.Join(inKeys, ", ")+")", "SELECT "+strings.Join(outKeys, ", ")+" FROM ins"))
	t.tombstoneSQL()
}

// inReturned is "row IN (sub)" kept from becoming a join: as a sub-plan
// (uncorrelated, hashable) the server hashes sub's rows once and probes
// them per row, whatever it estimated; a join of the statement's input
// with the rows a data-modifying CTE returned is costed at a row or so
// each, planned as a nested loop, and takes quadratic time when a group
// writes thousands of rows (seconds at 1,000, half a minute at 4,000).
func inReturned(row, sub string) string {
	return "(" + row + " IN (" + sub + ")) IS TRUE"
}

// stmtCache prepares statements once per connection (and plan mode).
type stmtCache struct {
	conn  *pgconn.PgConn
	names map[string]string // prefix + sql → statement name
	// prefix marks the statements prepared for the session's plan mode.
	prefix string
}

func (c *stmtCache) name(ctx context.Context, sql string) (string, error) {
	sql = c.prefix + sql
	if n, ok := c.names[sql]; ok {
		return n, nil
	}
	n := fmt.Sprintf("votr_s%d", len(c.names))
	if _, err := c.conn.Prepare(ctx, n, sql, nil); err != nil {
		return "", fmt.Errorf("prepare %q: %w", sql, err)
	}
	c.names[sql] = n
	return n, nil
}
