package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/script"
	"github.com/votr-dev/votr/sink"
)

// ReplayResult counts what a replay did with one feed's parked changes.
type ReplayResult struct {
	Feed string
	// Replayed changes went through the script and are marked replayed:
	// Applied wrote the target, Unchanged found it already holding the
	// result, Dropped and Deleted did what the script said.
	Replayed, Applied, Unchanged, Dropped, Deleted int
	// StillParked are changes the script dead-lettered again: they stay in
	// votr.dead_letters, not marked.
	StillParked int
}

// Replay re-applies the changes parked in votr.dead_letters (see
// replayFeed) of one feed ("S:D"), or of every feed when feed is "", with
// the topology's (fixed) merge script, printing one line per feed.
func (r *Runner) Replay(ctx context.Context, t *config.Topology, feed string) ([]ReplayResult, error) {
	feeds := t.Feeds()
	if feed != "" {
		f, err := t.ParseFeed(feed)
		if err != nil {
			return nil, err
		}
		feeds = []config.Feed{f}
	}
	dsns, err := r.regionDSNs(ctx, t, true)
	if err != nil {
		return nil, err
	}
	var out []ReplayResult
	for _, f := range feeds {
		res, err := replayFeed(ctx, f, dsns[f.Target.ID], t.Program, t.Sink.MergeTimeout)
		if err != nil {
			return out, err
		}
		out = append(out, res)
		line := fmt.Sprintf("feed %s: %d parked change(s) replayed (%d applied, %d already there, %d dropped, %d deleted)",
			res.Feed, res.Replayed, res.Applied, res.Unchanged, res.Dropped, res.Deleted)
		if res.StillParked > 0 {
			line += fmt.Sprintf("; %d parked again by the script", res.StillParked)
		}
		fmt.Fprintln(r.opts.Out, line)
	}
	return out, nil
}

// replayFeed re-applies the changes of feed f that are parked in the
// target's votr.dead_letters and not replayed yet, oldest first: each goes
// through the current merge script against the target row as it is now,
// and is marked replayed (replayed_at), all in one target transaction. A
// merge that fails again rolls everything back and names the dead letter; a
// change the script dead-letters again stays parked. It may run while the
// feed's sink runs: both lock the rows they merge into.
//
// The replayed writes carry no replication origin, so they travel on through
// every feed out of the target like a sink's writes; echoes of them are
// merged away as usual.
func replayFeed(ctx context.Context, f config.Feed, targetDSN string, prog *script.Program, timeout time.Duration) (ReplayResult, error) {
	feed := f.String()
	res := ReplayResult{Feed: feed}
	if prog == nil {
		return res, fmt.Errorf("feed %s: replay needs the merge script", feed)
	}
	host, err := script.NewHost(prog, timeout)
	if err != nil {
		return res, fmt.Errorf("feed %s: %w", feed, err)
	}
	pcfg, err := pgx.ParseConfig(targetDSN)
	if err != nil {
		return res, fmt.Errorf("feed %s: target connection string: %w", feed, scrubErr(err, targetDSN))
	}
	// The text forms of values must be the ones the sinks see.
	for k, v := range map[string]string{"TimeZone": "UTC", "DateStyle": "ISO, MDY", "IntervalStyle": "postgres",
		"extra_float_digits": "3", "bytea_output": "hex", "application_name": "votr replay"} {
		pcfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(ctx, pcfg)
	if err != nil {
		return res, fmt.Errorf("feed %s: connect to target: %w%s", feed, scrubErr(err, targetDSN), connectHint(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sourceID, targetID := f.Source.ID, f.Target.ID
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// Like a sink: the clock triggers keep the parked rows' clocks.
		if _, err := tx.Exec(ctx, `SELECT set_config('`+schema.SinkSetting+`', 'on', true)`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT id, tbl, op, source_lsn::text, source_commit, before::text, proposed::text
			FROM votr.dead_letters WHERE feed = $1 AND replayed_at IS NULL ORDER BY id FOR UPDATE`, feed)
		if err != nil {
			return fmt.Errorf("read dead letters: %w", err)
		}
		type parked struct {
			id               int64
			tbl, op, lsn     string
			commit           *time.Time
			before, proposed *string
		}
		letters, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (parked, error) {
			var p parked
			err := r.Scan(&p.id, &p.tbl, &p.op, &p.lsn, &p.commit, &p.before, &p.proposed)
			return p, err
		})
		if err != nil {
			return fmt.Errorf("read dead letters: %w", err)
		}
		tables := map[string]*replayTable{}
		for _, p := range letters {
			t := tables[p.tbl]
			if t == nil {
				if t, err = loadReplayTable(ctx, tx, p.tbl); err != nil {
					return fmt.Errorf("dead letter %d: %w", p.id, err)
				}
				tables[p.tbl] = t
			}
			fail := func(err error) error {
				return fmt.Errorf("dead letter %d (table %s, source LSN %s): %w", p.id, p.tbl, p.lsn, err)
			}
			before, err := t.row(p.before)
			if err != nil {
				return fail(fmt.Errorf("before: %w", err))
			}
			proposed, err := t.row(p.proposed)
			if err != nil {
				return fail(fmt.Errorf("proposed: %w", err))
			}
			keyRow := proposed
			if keyRow == nil {
				keyRow = before
			}
			if keyRow == nil {
				return fail(errors.New("it holds neither a before nor a proposed row"))
			}
			target, err := t.lock(ctx, tx, keyRow)
			if err != nil {
				return fail(err)
			}
			meta := script.Meta{Source: sourceID, Target: targetID, Table: p.tbl, LSN: p.lsn}
			if p.commit != nil {
				meta.CommitTime = *p.commit
			}
			if p.op == "insert" {
				before = nil
			}
			result, err := host.Merge(p.tbl, script.Op{Before: before, Proposed: proposed, Target: target, Meta: meta})
			if err != nil {
				return fail(fmt.Errorf("%w; fix the script and replay again (nothing was replayed)", err))
			}
			switch result.Action {
			case script.DeadLetter:
				res.StillParked++
				continue
			case script.Drop:
				res.Dropped++
			case script.Delete:
				if target != nil {
					if err := t.delete(ctx, tx, target); err != nil {
						return fail(err)
					}
				}
				res.Deleted++
			case script.Apply:
				wrote, err := t.upsert(ctx, tx, result.Row, target, proposed)
				if err != nil {
					return fail(err)
				}
				if wrote {
					res.Applied++
				} else {
					res.Unchanged++
				}
			default:
				return fail(fmt.Errorf("merge returned unknown action %d", result.Action))
			}
			if _, err := tx.Exec(ctx, `UPDATE votr.dead_letters SET replayed_at = now() WHERE id = $1`, p.id); err != nil {
				return fail(err)
			}
			res.Replayed++
		}
		return nil
	})
	if err != nil {
		return ReplayResult{Feed: feed}, fmt.Errorf("feed %s: replay: %w", feed, err)
	}
	return res, nil
}

// replayTable is a target table as replay reads and writes it.
type replayTable struct {
	name  string // as the script knows it
	ident string // quoted, schema-qualified
	cols  []replayColumn
	keys  []int // indexes in cols
}

func loadReplayTable(ctx context.Context, tx pgx.Tx, name string) (*replayTable, error) {
	ns, rel := "public", name
	if i := strings.IndexByte(name, '.'); i >= 0 {
		ns, rel = name[:i], name[i+1:]
	}
	t := &replayTable{name: name, ident: pgx.Identifier{ns, rel}.Sanitize()}
	rows, err := tx.Query(ctx, `
		SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid::oid::bigint, a.atttypid IN ('json'::regtype, 'jsonb'::regtype), COALESCE(a.attnum = ANY(i.indkey), false)
		FROM pg_attribute a
		LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
		WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		ORDER BY a.attnum`, t.ident)
	if err != nil {
		return nil, fmt.Errorf("read catalog of %s: %w", t.ident, err)
	}
	for rows.Next() {
		var c replayColumn
		var typ int64
		if err := rows.Scan(&c.name, &c.cast, &typ, &c.json, &c.key); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read catalog of %s: %w", t.ident, err)
		}
		c.typ = uint32(typ)
		if c.key {
			t.keys = append(t.keys, len(t.cols))
		}
		t.cols = append(t.cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read catalog of %s: %w", t.ident, err)
	}
	if len(t.cols) == 0 {
		return nil, fmt.Errorf("table %s does not exist in the target", t.ident)
	}
	if len(t.keys) == 0 {
		return nil, fmt.Errorf("table %s has no primary key", t.ident)
	}
	return t, nil
}

// row decodes a parked row (JSON, as rowJSON wrote it) into what a script
// sees, column by column as the sink decodes the stream.
func (t *replayTable) row(doc *string) (script.Row, error) {
	if doc == nil {
		return nil, nil
	}
	dec := json.NewDecoder(strings.NewReader(*doc))
	dec.UseNumber()
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, err
	}
	r := script.Row{}
	for _, c := range t.cols {
		v, ok := raw[c.name]
		if !ok {
			continue
		}
		if c.json {
			val, err := c.decode(v)
			if err != nil {
				return nil, fmt.Errorf("column %s: %w", c.name, err)
			}
			r[c.name] = val
			continue
		}
		var text *string
		var num json.Number
		var b bool
		switch {
		case string(v) == "null":
			r[c.name] = nil
			continue
		case json.Unmarshal(v, &text) == nil && text != nil:
		case json.Unmarshal(v, &num) == nil:
			s := num.String()
			text = &s
		case json.Unmarshal(v, &b) == nil:
			s := fmt.Sprint(b)
			text = &s
		default:
			return nil, fmt.Errorf("column %s: unexpected JSON %s", c.name, v)
		}
		val, err := c.decode([]byte(*text))
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", c.name, err)
		}
		r[c.name] = val
	}
	return r, nil
}

// keyWhere is "k1 = $1::type AND ..." with the key's values from row.
func (t *replayTable) keyWhere(row script.Row) (string, []any, error) {
	var conds []string
	var args []any
	for i, k := range t.keys {
		c := t.cols[k]
		text, ok, err := c.encode(row[c.name])
		if err != nil || !ok {
			return "", nil, fmt.Errorf("primary key column %s has no usable value", c.name)
		}
		conds = append(conds, fmt.Sprintf("%s = $%d::%s", pgx.Identifier{c.name}.Sanitize(), i+1, c.cast))
		args = append(args, text)
	}
	return strings.Join(conds, " AND "), args, nil
}

// lock reads and locks the target row with row's key (nil: none).
func (t *replayTable) lock(ctx context.Context, tx pgx.Tx, row script.Row) (script.Row, error) {
	where, args, err := t.keyWhere(row)
	if err != nil {
		return nil, err
	}
	sel := make([]string, len(t.cols))
	for i, c := range t.cols {
		sel[i] = pgx.Identifier{c.name}.Sanitize() + "::text"
	}
	vals := make([]*string, len(t.cols))
	dst := make([]any, len(t.cols))
	for i := range vals {
		dst[i] = &vals[i]
	}
	err = tx.QueryRow(ctx, "SELECT "+strings.Join(sel, ", ")+" FROM "+t.ident+" WHERE "+where+" FOR UPDATE", args...).Scan(dst...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the target row: %w", err)
	}
	r := script.Row{}
	for i, c := range t.cols {
		if vals[i] == nil {
			r[c.name] = nil
			continue
		}
		v, err := c.decode([]byte(*vals[i]))
		if err != nil {
			return nil, fmt.Errorf("target column %s: %w", c.name, err)
		}
		r[c.name] = v
	}
	return r, nil
}

func (t *replayTable) delete(ctx context.Context, tx pgx.Tx, target script.Row) error {
	where, args, err := t.keyWhere(target)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "DELETE FROM "+t.ident+" WHERE "+where, args...); err != nil {
		return fmt.Errorf("delete the target row: %w", err)
	}
	return nil
}

// upsert writes a merge result; columns the result lacks keep the target's
// (or the proposed row's) value, as in the sink. It reports whether the
// row changed.
func (t *replayTable) upsert(ctx context.Context, tx pgx.Tx, row, target, proposed script.Row) (bool, error) {
	if row == nil {
		return false, errors.New("merge returned apply without a row")
	}
	names := make([]string, len(t.cols))
	vals := make([]string, len(t.cols))
	sets := make([]string, 0, len(t.cols))
	var keyNames []string
	args := make([]any, len(t.cols))
	same := target != nil
	for i, c := range t.cols {
		v, ok := row[c.name]
		if !ok {
			switch {
			case target != nil:
				v = target[c.name]
			case proposed != nil && hasColumn(proposed, c.name):
				v = proposed[c.name]
			default:
				return false, fmt.Errorf("merge result lacks column %s and there is no target row to take it from", c.name)
			}
		}
		if same && !c.same(v, target[c.name]) {
			same = false
		}
		text, notNull, err := c.encode(v)
		if err != nil {
			return false, fmt.Errorf("merge result column %s: %w", c.name, err)
		}
		if notNull {
			args[i] = text
		}
		ident := pgx.Identifier{c.name}.Sanitize()
		names[i] = ident
		vals[i] = fmt.Sprintf("$%d::%s", i+1, c.cast)
		if c.key {
			keyNames = append(keyNames, ident)
		} else {
			sets = append(sets, ident+" = EXCLUDED."+ident)
		}
	}
	if same {
		return false, nil
	}
	conflict := "DO NOTHING"
	if len(sets) > 0 {
		conflict = "DO UPDATE SET " + strings.Join(sets, ", ")
	}
	sql := fmt.Sprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE VALUES (%s) ON CONFLICT (%s) %s",
		t.ident, strings.Join(names, ", "), strings.Join(vals, ", "), strings.Join(keyNames, ", "), conflict)
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		return false, fmt.Errorf("write the merge result: %w", err)
	}
	return true, nil
}

// replayColumn is a target column as replay reads and writes it.
type replayColumn struct {
	name string
	cast string // the type as written in a cast, from the catalog
	json bool   // json or jsonb
	typ  uint32 // type oid: values convert as the sinks convert them
	key  bool
}

func hasColumn(r script.Row, name string) bool { _, ok := r[name]; return ok }

// decode turns a value's text form into what a script sees, exactly as
// the sinks decode the stream.
func (c replayColumn) decode(text []byte) (any, error) { return sink.DecodeValue(c.typ, text) }

// encode gives the text form of a script's value for the column (ok false
// for NULL), as the sinks write it.
func (c replayColumn) encode(v any) (text string, ok bool, err error) {
	b, ok, err := sink.EncodeValue(c.typ, v)
	if err != nil {
		return "", false, fmt.Errorf("column %s (%s): %w", c.name, c.cast, err)
	}
	return string(b), ok, nil
}

// same reports whether writing v would leave the stored value t unchanged.
func (c replayColumn) same(v, t any) bool { return sink.SameValue(c.typ, v, t) }
