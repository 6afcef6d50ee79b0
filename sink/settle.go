package sink

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// item is one pending entry the sink has still to land: its table's
// pending set and the entry's index there.
type item struct {
	p  *pending
	ei int32
	// atNew: read the target at the entry's new image (as for an insert):
	// a merge result's insert met a row there, which for an update that
	// changes the key is not the row at its old key.
	atNew bool
	// merged: the change was merged (and counted as a conflict) in an
	// earlier settle round.
	merged bool
}

func (it item) entry() *entry { return &it.p.ents[it.ei] }

// readOp is the kind of change an item's target is read as (queueReads,
// sameText): its own, or an insert's at its new image (atNew). A delete
// has no new image: a merge result inserted at its key is read at its
// old key, the same row.
func (it item) readOp() byte {
	if e := it.entry(); !it.atNew || e.newSeg == nil || e.new < 0 {
		return e.op
	}
	return opInsert
}

// targetRead is what one statement snapshot showed of an entry's target row.
type targetRead struct {
	found   bool
	sameNew bool     // the row already is the entry's new image
	sameOld bool     // the row matches the entry's old image
	xmin    []byte   // the row version read, for the compare-and-set
	vals    [][]byte // text values in table.all order (nil = NULL)
	tombX   []byte   // the key's tombstone version (xmin), nil when none
	tomb    []byte   // its image (JSON), nil when none
}

// readGroup is one read statement: the items of one table and kind.
type readGroup struct {
	items []int // indexes in the items being read
}

// readPlan maps read statements' rows back to the items.
type readPlan struct {
	groups []readGroup
	items  []item // the items read, in the order of the reads parse returns
}

// queueReads adds to b one read statement per table and change kind for
// the items (see table.sql["readins"]).
func (a *applier) queueReads(ctx context.Context, b *pgconn.Batch, items []item) (readPlan, error) {
	type gk struct {
		t  *table
		op byte
	}
	var order []gk
	byKey := map[gk][]int{}
	for i, it := range items {
		k := gk{it.p.t, it.readOp()}
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], i)
	}
	plan := readPlan{items: items}
	for _, k := range order {
		idx := byKey[k]
		p := items[idx[0]].p
		ents := make([]int32, len(idx))
		for j, i := range idx {
			ents[j] = items[i].ei
		}
		var kind string
		var args [][]byte
		switch k.op {
		case opInsert:
			kind = "readins"
			args = a.encodeTuples(k.t, p, ents, false, nil)
		case opUpdate:
			kind = "readupd"
			args = a.encodeTuples(k.t, p, ents, true, nil)
			args = a.encodeTuples(k.t, p, ents, false, args)
		case opDelete:
			kind = "readdel"
			args = a.encodeTuples(k.t, p, ents, true, nil)
		default:
			return plan, fmt.Errorf("internal error: reading the target of change kind %d", k.op)
		}
		name, err := a.stmts.name(ctx, k.t.sql[kind])
		if err != nil {
			return plan, err
		}
		b.ExecPrepared(name, args, formats(len(args)), nil)
		plan.groups = append(plan.groups, readGroup{items: idx})
	}
	return plan, nil
}

// parse decodes the read statements' results (one per group, in order).
func (rp readPlan) parse(res []*pgconn.Result) ([]targetRead, error) {
	reads := make([]targetRead, len(rp.items))
	for gi, g := range rp.groups {
		for _, row := range res[gi].Rows {
			k, err := strconv.Atoi(string(row[0]))
			if err != nil || k < 1 || k > len(g.items) {
				return nil, fmt.Errorf("read target rows: bad row index %q", row[0])
			}
			r := &reads[g.items[k-1]]
			if row[4] != nil {
				r.tombX = append([]byte(nil), row[4]...)
				r.tomb = append([]byte(nil), row[5]...)
			}
			if row[1] == nil {
				continue // no row at the key
			}
			r.found = true
			r.xmin = append([]byte(nil), row[1]...)
			r.sameNew = string(row[2]) == "t"
			r.sameOld = string(row[3]) == "t"
			r.vals = make([][]byte, len(row)-6)
			for i, v := range row[6:] {
				if v != nil {
					r.vals[i] = append([]byte{}, v...)
				}
			}
		}
	}
	for i, it := range rp.items {
		if r := &reads[i]; r.found {
			it.sameText(r)
		}
	}
	return reads, nil
}

// sameText completes a found row's comparisons with the entry's images
// over the columns the read statement left to the sink (table.textCmp):
// the kind queueReads read it as (readOp).
func (it item) sameText(r *targetRead) {
	t, e := it.p.t, it.entry()
	oldSeg, oldTup := e.image(true)
	switch it.readOp() {
	case opInsert:
		r.sameNew = r.sameNew && t.textEqual(r.vals, e.newSeg, e.new, t.every)
	case opUpdate:
		r.sameNew = r.sameNew && t.textEqual(r.vals, e.newSeg, e.new, t.every)
		r.sameOld = r.sameOld && t.textEqual(r.vals, oldSeg, oldTup, t.cmp)
	case opDelete:
		r.sameOld = r.sameOld && t.textEqual(r.vals, oldSeg, oldTup, t.cmp)
	}
}

// readTargets reads the items' target rows in one round trip.
func (a *applier) readTargets(ctx context.Context, items []item) ([]targetRead, error) {
	b := &pgconn.Batch{}
	plan, err := a.queueReads(ctx, b, items)
	if err != nil {
		return nil, err
	}
	res, err := a.pg.ExecBatch(ctx, b).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("read target rows: %w", err)
	}
	return plan.parse(res)
}

// rowWrite is one compare-and-set write of the settle loop.
type rowWrite struct {
	it   item
	kind byte     // writeUpdate, writeDelete, writeInsert or writeTomb
	key  [][]byte // target key (table.allKey order) of the row read; writeTomb: the tombstone's key
	xmin []byte   // its version when read (writeTomb: the tombstone's, nil if none)
	vals []*[]byte
	tomb []byte // writeTomb: the image to record
}

const (
	writeUpdate byte = iota + 1
	writeDelete
	writeInsert
	writeTomb
	writeKinds = writeTomb
)

// decide turns what was read of each item's target into writes: the new
// image where the target still is the old one, nothing where it already is
// the new one, and otherwise what the merge (resolve) makes of it.
func (a *applier) decide(items []item, reads []targetRead) ([]rowWrite, []deadLetter, error) {
	var ws []rowWrite
	var dead []deadLetter
	for i, it := range items {
		r, e, t := &reads[i], it.entry(), it.p.t
		switch {
		case r.found && r.sameNew:
			continue
		case r.found && r.sameOld && e.op == opUpdate && !keyMoved(t, e):
			ws = append(ws, rowWrite{it: it, kind: writeUpdate, key: targetKey(t, r.vals), xmin: r.xmin, vals: newImage(t, e, r.vals)})
			continue
		case r.found && r.sameOld && e.op == opDelete && r.tomb == nil:
			// The row the delete saw, and no earlier delete to join:
			// the row goes and becomes the key's tombstone.
			key := targetKey(t, r.vals)
			ws = append(ws, rowWrite{it: it, kind: writeDelete, key: key, xmin: r.xmin},
				rowWrite{it: it, kind: writeTomb, key: key, tomb: textImage(t, r.vals)})
			continue
		}
		// Everything else is merged: a conflicting row; a key-moving update
		// (the old key leaves a tombstone); an insert or update meeting a
		// tombstone; a delete of an absent row or of a key deleted before
		// (its image joins the tombstone).
		c := &conflictRow{t: t, e: e, found: r.found, tomb: r.tomb}
		if r.found {
			c.setTarget(r.vals)
		}
		w := &tableWrites{}
		dl, _, err := a.resolve(c, w)
		if err != nil {
			return nil, nil, err
		}
		if it.merged {
			// Merged again because its row changed: still one conflict.
			a.st.conflicts--
		}
		it.merged = true
		if dl != nil {
			dead = append(dead, *dl)
		}
		// A result at another key than the target row's (resolve then
		// also deletes the old key) is a new row there.
		moved := r.found && len(w.upserts) > 0 && len(w.deletes) > 0
		for _, vals := range w.upserts {
			if r.found && !moved {
				ws = append(ws, rowWrite{it: it, kind: writeUpdate, key: targetKey(t, r.vals), xmin: r.xmin, vals: vals})
			} else {
				ws = append(ws, rowWrite{it: it, kind: writeInsert, vals: vals})
			}
		}
		if len(w.deletes) > 0 && r.found {
			ws = append(ws, rowWrite{it: it, kind: writeDelete, key: targetKey(t, r.vals), xmin: r.xmin})
		}
		for _, tw := range w.tombs {
			ws = append(ws, rowWrite{it: it, kind: writeTomb, key: tw.key, xmin: r.tombX, tomb: tw.image})
		}
	}
	return ws, dead, nil
}

// targetKey picks the key values of a row read in table.all order.
func targetKey(t *table, vals [][]byte) [][]byte {
	key := make([][]byte, len(t.allKey))
	for j, i := range t.allKey {
		key[j] = vals[i]
	}
	return key
}

// newImage is an update's new row in table.all order: the source's values
// over the target's (which fill the columns the source lacks and the
// unchanged TOASTed values it did not send).
func newImage(t *table, e *entry, target [][]byte) []*[]byte {
	vals := make([]*[]byte, len(t.all))
	for i := range t.all {
		v := target[i]
		if ci := t.srcOfAll[i]; ci >= 0 {
			f := e.newSeg.fields[e.new+int32(t.srcIdx[ci])]
			switch f.kind {
			case fieldText:
				v = e.newSeg.value(f)
			case fieldNull:
				v = nil
			}
		}
		if v != nil {
			vals[i] = &v
		}
	}
	return vals
}

// maxSettleRounds bounds how often rows may change under one group's
// writes before the group gives up (and is retried).
const maxSettleRounds = 100

// settle lands the writes: each round locks the rows to write in key
// order, writes them compare-and-set, and reads again (and decides again)
// the items whose row changed since it was read or whose key someone else
// inserted first. A concurrent writer's row is thus always merged with,
// never overwritten.
//
// last (nil: none) is the group's last source commit when the writes are
// the group's last and their rows were locked before they were read: if
// the first round is compare-and-set updates only, it cannot miss, and it
// commits the group in the same round trip (strictly: were a row not
// written after all, the batch fails before its COMMIT). committed is then
// the target's WAL position after the commit.
func (a *applier) settle(ctx context.Context, ws []rowWrite, dead []deadLetter, last *commit) (committed *pglogrepl.LSN, err error) {
	if last != nil && !a.unfused && len(dead) == 0 && len(ws) > 0 && onlyUpdates(ws) {
		lsn, err := a.writeAndCommit(ctx, ws, *last)
		return &lsn, err
	}
	for round := 1; len(ws) > 0 || len(dead) > 0; round++ {
		if round > maxSettleRounds {
			return nil, fmt.Errorf("target rows kept changing under %d rounds of writes", maxSettleRounds)
		}
		missed, err := a.writeRound(ctx, ws, dead)
		if err != nil {
			return nil, err
		}
		if len(missed) == 0 {
			return nil, nil
		}
		a.s.mu.Lock()
		a.s.st.Rewrites += int64(len(missed))
		a.s.mu.Unlock()
		reads, err := a.readTargets(ctx, missed)
		if err != nil {
			return nil, err
		}
		if ws, dead, err = a.decide(missed, reads); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

func onlyUpdates(ws []rowWrite) bool {
	for _, w := range ws {
		if w.kind != writeUpdate {
			return false
		}
	}
	return true
}

// writeAndCommit writes compare-and-set updates of locked rows and commits
// the group, in one round trip.
func (a *applier) writeAndCommit(ctx context.Context, ws []rowWrite, last commit) (pglogrepl.LSN, error) {
	b := &pgconn.Batch{}
	if _, err := a.queueWrites(ctx, b, ws, nil, true); err != nil {
		return 0, err
	}
	if err := a.queueCommit(ctx, b, last); err != nil {
		return 0, err
	}
	res, err := a.pg.ExecBatch(ctx, b).ReadAll()
	if isCode(err, unlockedRowCode) {
		// Not expected of rows locked before they were read (a row that
		// appeared at the key after the lock was not locked, or a
		// trigger on the target wrote one). Leave the transaction open
		// (failed) and report a lock error: the group is rolled back and
		// applied again, once without committing with its writes, so that
		// the rows are settled the way that reads again what missed.
		a.inTxn = true
		a.unfused = true
		return 0, &pgconn.PgError{Severity: "ERROR", Code: "40001",
			Message: "internal: a locked target row changed before its compare-and-set write: " + err.Error()}
	}
	return a.committed(res, err, last)
}

// lockOrder is the one order in which every sink locks tables' rows:
// children first (then by name); within a table, rows go in key order.
func lockOrder(x, y *table) int {
	if x.rank != y.rank {
		return y.rank - x.rank
	}
	return strings.Compare(x.ident, y.ident)
}

// unlockedRowCode is the SQLSTATE of casstrict's guard (division by zero).
const unlockedRowCode = "22012"

// writeStmt is one statement of a write round and the writes it carries.
type writeStmt struct {
	ws     []int // indexes in the round's writes
	lock   bool  // a lock statement: no result rows to check
	insert bool  // inserts of new rows: a miss met a row at the new key
}

// writeRound runs one round of writes and dead letters in one round trip
// and returns the items whose write did not land.
//
// Order: updates and deletes table by table, children first (the order in
// which the workload's transactions write: totals, ballots, candidates),
// each table's rows locked in key order before they are written; then the
// inserts of new rows, parents first.
func (a *applier) writeRound(ctx context.Context, ws []rowWrite, dead []deadLetter) ([]item, error) {
	b := &pgconn.Batch{}
	stmts, err := a.queueWrites(ctx, b, ws, dead, false)
	if err != nil {
		return nil, err
	}
	res, err := a.pg.ExecBatch(ctx, b).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("write merge results: %w", err)
	}
	return missedWrites(ws, stmts, res)
}

// queueWrites adds a write round's statements to b, in writeRound's order.
// locked: the rows are locked already (flush locked them before reading),
// and compare-and-set updates are strict (see writeAndCommit).
func (a *applier) queueWrites(ctx context.Context, b *pgconn.Batch, ws []rowWrite, dead []deadLetter, locked bool) ([]writeStmt, error) {
	byTable := map[*table][writeKinds][]int{}
	var tables []*table
	for i, w := range ws {
		t := w.it.p.t
		g, ok := byTable[t]
		if !ok {
			tables = append(tables, t)
		}
		g[w.kind-1] = append(g[w.kind-1], i)
		byTable[t] = g
	}
	slices.SortFunc(tables, lockOrder)
	var stmts []writeStmt
	queue := func(t *table, kind string, args [][]byte, st writeStmt) error {
		name, err := a.stmts.name(ctx, t.sql[kind])
		if err != nil {
			return err
		}
		b.ExecPrepared(name, args, formats(len(args)), nil)
		stmts = append(stmts, st)
		return nil
	}
	keyArgs := func(t *table, idx []int, withXmin bool, args [][]byte) [][]byte {
		for j := range t.allKey {
			arr := a.array()
			for _, wi := range idx {
				arr.add(ws[wi].key[j])
			}
			args = append(args, arr.bytes())
		}
		if withXmin {
			arr := a.array()
			for _, wi := range idx {
				if x := ws[wi].xmin; x == nil {
					arr.addNull() // a tombstone write that saw none
				} else {
					arr.add(x)
				}
			}
			args = append(args, arr.bytes())
		}
		return args
	}
	rowArgs := func(t *table, idx []int, args [][]byte) [][]byte {
		for i := range t.all {
			arr := a.array()
			for _, wi := range idx {
				if v := ws[wi].vals[i]; v == nil {
					arr.addNull()
				} else {
					arr.add(*v)
				}
			}
			args = append(args, arr.bytes())
		}
		return args
	}
	for _, t := range tables {
		g := byTable[t]
		upd, del := g[writeUpdate-1], g[writeDelete-1]
		if len(upd)+len(del) > 0 && !locked {
			if err := queue(t, "lock", keyArgs(t, append(upd[:len(upd):len(upd)], del...), false, nil), writeStmt{lock: true}); err != nil {
				return nil, err
			}
		}
		if len(upd) > 0 {
			cas := "cas"
			if locked {
				cas = "casstrict"
			}
			if err := queue(t, cas, rowArgs(t, upd, keyArgs(t, upd, true, nil)), writeStmt{ws: upd}); err != nil {
				return nil, err
			}
		}
		if len(del) > 0 {
			if err := queue(t, "casdel", keyArgs(t, del, true, nil), writeStmt{ws: del}); err != nil {
				return nil, err
			}
		}
	}
	for i := len(tables) - 1; i >= 0; i-- {
		t := tables[i]
		if ins := byTable[t][writeInsert-1]; len(ins) > 0 {
			if err := queue(t, "insnew", rowArgs(t, ins, nil), writeStmt{ws: ins, insert: true}); err != nil {
				return nil, err
			}
		}
	}
	for _, t := range tables {
		if tw := byTable[t][writeTomb-1]; len(tw) > 0 {
			args := keyArgs(t, tw, true, nil)
			arr := a.array()
			for _, wi := range tw {
				arr.add(ws[wi].tomb)
			}
			if err := queue(t, "tombcas", append(args, arr.bytes()), writeStmt{ws: tw}); err != nil {
				return nil, err
			}
		}
	}
	for _, d := range dead {
		queueDeadLetter(b, a.s.feed, d)
	}
	return stmts, nil
}

// missedWrites reads a write round's results: the items whose write did
// not land.
func missedWrites(ws []rowWrite, stmts []writeStmt, res []*pgconn.Result) ([]item, error) {
	var missed []item
	seen := map[item]int{} // index in missed: an item may have missed with several writes
	for si, st := range stmts {
		if st.lock {
			continue
		}
		landed := make([]bool, len(st.ws))
		for _, row := range res[si].Rows {
			k, err := strconv.Atoi(string(row[0]))
			if err != nil || k < 1 || k > len(st.ws) {
				return nil, fmt.Errorf("write merge results: bad row index %q", row[0])
			}
			landed[k-1] = true
		}
		for j, ok := range landed {
			if ok {
				continue
			}
			it := ws[st.ws[j]].it
			i, dup := seen[it]
			if !dup {
				i = len(missed)
				seen[it] = i
				missed = append(missed, it)
			}
			if st.insert {
				missed[i].atNew = true
			}
		}
	}
	return missed, nil
}

// empty reports whether no segment is waiting to be applied.
func (q *queue) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.segs) == 0
}

// isLockError reports an error that aborts the group because of other
// writers' locks: a deadlock, the session's lock_timeout or a
// serialization failure. The group is applied again.
func isLockError(err error) bool {
	return isCode(err, "40P01") || isCode(err, "55P03") || isCode(err, "40001")
}

// lockRetried counts a group retried because of a lock error.
func (s *Sink) lockRetried(err error) {
	s.mu.Lock()
	s.st.LockRetries++
	s.mu.Unlock()
	s.m.lockRetried()
}

// farBehind reports whether the source's WAL runs well past the group: the
// feed is catching up, and flushing after each group would only slow it.
func farBehind(segs []*segment, walEnd *walEndBox) bool {
	last := segs[len(segs)-1].endLSN()
	end := walEnd.get()
	return end > last && end-last > 1<<20
}
