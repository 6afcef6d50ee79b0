package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/script"
)

// ReplayResult counts what a replay did with one feed's parked changes.
type ReplayResult struct {
	// Replayed changes went through the script and are marked replayed:
	// Applied wrote the target, Unchanged found it already holding the
	// result, Dropped and Deleted did what the script said.
	Replayed, Applied, Unchanged, Dropped, Deleted int
	// StillParked are changes the script dead-lettered again: they stay in
	// votr.dead_letters, not marked.
	StillParked int
}

// Replay re-applies the feed's changes that are parked in its target's
// votr.dead_letters and not replayed yet, oldest first: each goes through
// the merge script (cfg.Program, fixed since) against the target row as it
// is now, by the sink's own catalog, merge and write path, and is marked
// replayed, all in one target transaction. A merge that fails again rolls
// everything back and names the dead letter; a change the script
// dead-letters again stays parked. Only the target is used (cfg.SourceDSN
// is not dialled). It may run while the feed's sink runs: both lock the
// rows they merge into.
//
// The replayed writes carry no replication origin, so they travel on
// through every feed out of the target like a sink's writes; echoes of
// them are merged away as usual.
func Replay(ctx context.Context, cfg Config) (ReplayResult, error) {
	var res ReplayResult
	feed := schema.FeedName(cfg.SourceID, cfg.TargetID)
	if cfg.Program == nil {
		return res, fmt.Errorf("feed %s: replay needs the merge script", feed)
	}
	if cfg.Discard {
		return res, errors.New("replay: a discarding sink applies nothing")
	}
	s, err := New(cfg)
	if err != nil {
		return res, err
	}
	conn, err := s.connectTo(ctx, cfg.TargetDSN, "votr replay", false)
	if err != nil {
		return res, fmt.Errorf("feed %s: connect to target: %w", feed, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	a := newApplier(s, conn, false)
	a.replay = true
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// Like a sink: the clock triggers keep the parked rows' clocks.
		if _, err := tx.Exec(ctx, `SELECT set_config('`+schema.SinkSetting+`', 'on', true)`); err != nil {
			return err
		}
		store := DeadLettersIn(tx)
		letters, err := store.lockPending(ctx, feed)
		if err != nil {
			return err
		}
		tables := map[string]*table{}
		for _, p := range letters {
			t := tables[p.table]
			if t == nil {
				if t, err = replayTable(ctx, conn, p.table); err != nil {
					return fmt.Errorf("dead letter %d: %w", p.id, err)
				}
				tables[p.table] = t
			}
			action, wrote, err := a.replayChange(ctx, t, p)
			if err != nil {
				return fmt.Errorf("dead letter %d (table %s, source LSN %s): %w", p.id, p.table, p.lsn, err)
			}
			switch action {
			case script.DeadLetter:
				res.StillParked++
				continue
			case script.Drop:
				res.Dropped++
			case script.Delete:
				res.Deleted++
			case script.Apply:
				if wrote {
					res.Applied++
				} else {
					res.Unchanged++
				}
			}
			if err := store.markReplayed(ctx, p.id); err != nil {
				return err
			}
			res.Replayed++
		}
		return nil
	})
	if err != nil {
		return ReplayResult{}, fmt.Errorf("feed %s: replay: %w", feed, err)
	}
	return res, nil
}

// replayTable describes the target table a dead letter names ("ballots",
// "ns.name") as a source relation with the target's columns, so that
// parked rows go through the same table as streamed ones.
func replayTable(ctx context.Context, conn *pgx.Conn, name string) (*table, error) {
	ns, relName := "public", name
	if i := strings.IndexByte(name, '.'); i >= 0 {
		ns, relName = name[:i], name[i+1:]
	}
	all, err := readColumns(ctx, conn, ns, relName)
	if err != nil {
		return nil, err
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("table %s does not exist in the target", pgx.Identifier{ns, relName}.Sanitize())
	}
	rel := &relation{namespace: ns, name: relName, identity: identityFull}
	for _, c := range all {
		rel.cols = append(rel.cols, relColumn{name: c.name, typ: c.typ})
	}
	return newTable(rel, all)
}

// replayChange merges one parked change into the target row, locked, and
// writes the result. It returns the script's action and, for an apply,
// whether the row changed.
func (a *applier) replayChange(ctx context.Context, t *table, p parkedChange) (script.Action, bool, error) {
	defer a.resetArrays()
	seg := &segment{}
	before, err := parkedTuple(seg, t, p.before)
	if err != nil {
		return 0, false, fmt.Errorf("before: %w", err)
	}
	proposed, err := parkedTuple(seg, t, p.proposed)
	if err != nil {
		return 0, false, fmt.Errorf("proposed: %w", err)
	}
	key := proposed
	if key < 0 {
		key = before
	}
	if key < 0 {
		return 0, false, errors.New("it holds neither a before nor a proposed row")
	}
	for _, k := range t.keys {
		if seg.fields[key+int32(t.srcIdx[k])].kind != fieldText {
			return 0, false, fmt.Errorf("primary key column %s has no usable value", t.cols[k].name)
		}
	}
	meta := txnMeta{lsn: p.lsn}
	if p.commit != nil {
		meta.commitTime = p.commit.Sub(pgEpoch).Microseconds()
	}
	e := entry{op: opByte(p.op), old: before, new: proposed, keySeg: seg, key: key, meta: meta, next: -1}
	if before >= 0 {
		e.oldSeg = seg
	}
	if proposed >= 0 {
		e.newSeg = seg
	}

	// Read and lock the target row at the key.
	lookup := &pending{t: t, ents: []entry{{newSeg: seg, new: key}}}
	args := a.encodeTuples(t, lookup, []int32{0}, false, nil)
	name, err := a.stmts.name(ctx, t.sql["lockpresent"])
	if err != nil {
		return 0, false, err
	}
	rr := a.pg.ExecPrepared(ctx, name, args, formats(len(args)), nil).Read()
	if rr.Err != nil {
		return 0, false, fmt.Errorf("read the target row: %w", rr.Err)
	}
	c := &conflictRow{t: t, e: &e, found: len(rr.Rows) > 0}
	if c.found {
		c.setTarget(rr.Rows[0][1:])
	}

	w := &tableWrites{}
	_, action, err := a.resolve(c, w)
	if me := (*mergeError)(nil); errors.As(err, &me) && me.err != nil {
		return 0, false, fmt.Errorf("%w; fix the script and replay again (nothing was replayed)", me.err)
	}
	if err != nil {
		return 0, false, err
	}
	if action == script.DeadLetter {
		return action, false, nil
	}
	wrote := len(w.upserts) > 0
	if err := a.write(ctx, []*table{t}, map[*table]*tableWrites{t: w}, nil); err != nil {
		return 0, false, err
	}
	return action, wrote, nil
}

// opByte is the inverse of opName.
func opByte(op string) byte {
	switch op {
	case "insert":
		return opInsert
	case "update":
		return opUpdate
	case "delete":
		return opDelete
	}
	return 0
}

// parkedTuple appends a parked row (JSON, as rowJSON wrote it) to seg as
// a tuple of text values, the form the stream carries, and returns the
// index of its first field (-1 for no row). A column the row lacks is
// left out of what the script sees, as an unsent TOASTed value is.
func parkedTuple(seg *segment, t *table, doc []byte) (int32, error) {
	if doc == nil {
		return -1, nil
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return -1, err
	}
	start := int32(len(seg.fields))
	for _, c := range t.rel.cols {
		v, ok := raw[c.name]
		var text []byte
		switch {
		case !ok:
			seg.fields = append(seg.fields, field{kind: fieldToast})
			continue
		case string(v) == "null":
			seg.fields = append(seg.fields, field{kind: fieldNull})
			continue
		case c.typ == oidJSON || c.typ == oidJSONB:
			text = v
		default:
			var s string
			var num json.Number
			var b bool
			switch {
			case json.Unmarshal(v, &s) == nil:
				text = []byte(s)
			case json.Unmarshal(v, &num) == nil:
				text = []byte(num.String())
			case json.Unmarshal(v, &b) == nil:
				text = []byte(fmt.Sprint(b))
			default:
				return -1, fmt.Errorf("column %s: unexpected JSON %s", c.name, v)
			}
		}
		off := len(seg.buf)
		seg.buf = append(seg.buf, text...)
		seg.fields = append(seg.fields, field{off: int32(off), n: int32(len(text)), kind: fieldText})
	}
	return start, nil
}
