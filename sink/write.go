package sink

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// stmtOp is one bulk statement of a flush and the entries it carries.
type stmtOp struct {
	p    *pending
	op   byte
	ents []int32 // indexes in p.ents
	args [][]byte
}

// encodeTuples fills one text[] per column with the given tuples.
func (a *applier) encodeTuples(t *table, p *pending, ents []int32, old bool, args [][]byte) [][]byte {
	for ci := range t.cols {
		args = a.encodeColumn(t, p, ents, old, ci, args)
	}
	return args
}

// encodeKeys fills one text[] per key column, in target-key order
// (table.allKey, as the lock statement takes them), with the given
// tuples' keys.
func (a *applier) encodeKeys(t *table, p *pending, ents []int32, old bool, args [][]byte) [][]byte {
	for _, ai := range t.allKey {
		args = a.encodeColumn(t, p, ents, old, t.srcOfAll[ai], args)
	}
	return args
}

// encodeColumn appends the text[] of column ci (an index in table.cols) of
// the given tuples.
func (a *applier) encodeColumn(t *table, p *pending, ents []int32, old bool, ci int, args [][]byte) [][]byte {
	arr := a.array()
	si := int32(t.srcIdx[ci])
	for _, ei := range ents {
		seg, tup := p.ents[ei].image(old)
		f := seg.fields[tup+si]
		if f.kind == fieldText {
			arr.add(seg.value(f))
		} else {
			arr.addNull()
		}
	}
	return append(args, arr.bytes())
}

// image is the tuple of an entry's old image (old) or new image. Without
// a before-image (non-FULL identity without a key change) the old image is
// the new tuple: it holds the key, and the rest is not compared.
func (e *entry) image(old bool) (*segment, int32) {
	if old && e.oldSeg != nil && e.old >= 0 {
		return e.oldSeg, e.old
	}
	return e.newSeg, e.new
}

// textEqual compares, over the columns of idx (indexes in cols) that the
// sink compares itself (textCmp), the tuple's text forms with a target
// row's (vals, in all order), as the read statements compare the others:
// NULL equals NULL, and a value not sent (an unchanged TOASTed one) counts
// as NULL, as encodeColumn sends it.
func (t *table) textEqual(vals [][]byte, seg *segment, tup int32, idx []int) bool {
	for _, ci := range idx {
		if !t.textCmp[ci] {
			continue
		}
		f := seg.fields[tup+int32(t.srcIdx[ci])]
		v := vals[t.allOf[ci]]
		if f.kind != fieldText {
			if v != nil {
				return false
			}
		} else if v == nil || !bytes.Equal(seg.value(f), v) {
			return false
		}
	}
	return true
}

var binaryFormats = func() []int16 {
	f := make([]int16, 4096)
	for i := range f {
		f[i] = 1
	}
	return f
}()

func formats(n int) []int16 {
	if n <= len(binaryFormats) {
		return binaryFormats[:n]
	}
	f := make([]int16, n)
	for i := range f {
		f[i] = 1
	}
	return f
}

// sortedPending returns the tables with pending entries, parents first.
func (a *applier) sortedPending() []*pending {
	ps := make([]*pending, 0, len(a.pend))
	for _, p := range a.pend {
		if len(p.ents) > 0 {
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(x, y *pending) int {
		if x.t.rank != y.t.rank {
			return x.t.rank - y.t.rank
		}
		return strings.Compare(x.t.ident, y.t.ident)
	})
	return ps
}

// begin queues BEGIN when no target transaction is open, and the plan
// mode the feed needs (see planSteady) if the session is not in it yet; it
// returns how many results it added to the batch.
func (a *applier) begin(b *pgconn.Batch) int {
	if a.inTxn {
		return 0
	}
	b.ExecParams("BEGIN", nil, nil, nil, nil)
	a.inTxn = true
	mode := planSteady
	if a.fastWrites {
		mode = planBulk
	}
	if mode == a.planMode {
		return 1
	}
	b.ExecParams(planModeSQL[mode], nil, nil, nil, nil)
	a.planMode = mode
	a.stmts.prefix = planPrefix[mode]
	return 2
}

// flush writes the pending entries inside the open target transaction
// (opening it if needed). One round trip inserts the new rows (parents
// first) and reads, without locking, the target rows of the updates and
// deletes; the inserts that met an existing row are read next; then settle
// writes everything that is to change, compare-and-set, each table's rows
// locked in key order. Rows that others (other feeds, users' clients) also
// write are thus locked only by the last statements before the commit, in
// one order, and never overwritten with something merged from a stale read.
func (a *applier) flush(ctx context.Context) error {
	_, err := a.flushThen(ctx, nil)
	return err
}

// flushThen is flush that, given the group's last source commit, may
// commit the group with its last write round (see settle); committed then
// holds the target's WAL position after the commit, and the caller does
// not commit again.
func (a *applier) flushThen(ctx context.Context, last *commit) (committed *pglogrepl.LSN, err error) {
	ps := a.sortedPending()
	if len(ps) == 0 {
		return nil, nil
	}
	defer func() {
		for _, p := range ps {
			p.ents = p.ents[:0]
			clear(p.idx)
		}
		a.resetArrays()
	}()
	// Inserts first; then the rows of every update and delete are locked
	// (in key order, as every write round locks) before any is written or
	// read, so they cannot change before the group writes them: its
	// compare-and-set writes land at once and the last of them can carry
	// the COMMIT. While catching up, updates and deletes are written at
	// once (fast writes), after that lock: written unlocked, in the order
	// of their arrays, they took rows out of key order and made lock cycles
	// with writers that keep it (a worker's totals updates).
	var inserts, writes, dels []stmtOp
	var reads, locked []item
	for _, p := range ps {
		var ins, upd, del []int32
		for ei := range p.ents {
			op := p.ents[ei].op
			switch {
			case op == opInsert:
				ins = append(ins, int32(ei))
			case op == opUpdate && a.fastWrites && !keyMoved(p.t, &p.ents[ei]):
				// (A key-moving update is merged: its old key keeps a
				// tombstone.)
				upd = append(upd, int32(ei))
			case op == opDelete && a.fastWrites:
				del = append(del, int32(ei))
			case op == opUpdate || op == opDelete:
				reads = append(reads, item{p: p, ei: int32(ei)})
			}
			if op == opUpdate || op == opDelete {
				locked = append(locked, item{p: p, ei: int32(ei)})
			}
		}
		if len(ins) > 0 {
			inserts = append(inserts, stmtOp{p: p, op: opInsert, ents: ins, args: a.encodeTuples(p.t, p, ins, false, nil)})
		}
		if len(upd) > 0 {
			args := a.encodeTuples(p.t, p, upd, true, nil)
			writes = append(writes, stmtOp{p: p, op: opUpdate, ents: upd, args: a.encodeTuples(p.t, p, upd, false, args)})
		}
		if len(del) > 0 {
			dels = append([]stmtOp{{p: p, op: opDelete, ents: del, args: a.encodeTuples(p.t, p, del, true, nil)}}, dels...)
		}
	}
	// Children before parents for deletes.
	writes = append(writes, dels...)
	if len(inserts)+len(writes)+len(reads) == 0 {
		return nil, nil
	}
	b := &pgconn.Batch{}
	began := a.begin(b)
	queue := func(o stmtOp) error {
		kind := map[byte]string{opInsert: "insert", opUpdate: "update", opDelete: "delete"}[o.op]
		if o.op == opInsert && a.s.plainInserts() {
			kind = "insertplain"
		}
		name, err := a.stmts.name(ctx, o.p.t.sql[kind])
		if err != nil {
			return err
		}
		b.ExecPrepared(name, o.args, formats(len(o.args)), nil)
		return nil
	}
	for _, o := range inserts {
		if err := queue(o); err != nil {
			return nil, err
		}
	}
	locks, err := a.queueLocks(ctx, b, locked)
	if err != nil {
		return nil, err
	}
	for _, o := range writes {
		if err := queue(o); err != nil {
			return nil, err
		}
	}
	plan, err := a.queueReads(ctx, b, reads)
	if err != nil {
		return nil, err
	}
	res, err := a.pg.ExecBatch(ctx, b).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("apply changes: %w", err)
	}
	res = res[began:]
	// The results: the inserts', the locks', the fast writes', the reads'.
	opRes := slices.Concat(res[:len(inserts)], res[len(inserts)+locks:len(inserts)+locks+len(writes)])
	ops := slices.Concat(inserts, writes)
	got, err := plan.parse(res[len(inserts)+locks+len(writes):])
	if err != nil {
		return nil, err
	}
	ws, dead, err := a.decide(reads, got)
	if err != nil {
		return nil, err
	}
	// Statements that fell short (inserts that met existing rows; while
	// catching up, updates and deletes whose row differed): read their rows
	// again and settle those not already at the new image.
	var short []item
	for i, o := range ops {
		if n := opRes[i].CommandTag.RowsAffected(); n < int64(len(o.ents)) {
			for _, ei := range o.ents {
				short = append(short, item{p: o.p, ei: ei})
			}
		}
	}
	if len(short) > 0 {
		got, err := a.readTargets(ctx, short)
		if err != nil {
			return nil, err
		}
		more, moreDead, err := a.decide(short, got)
		if err != nil {
			return nil, err
		}
		ws, dead = append(ws, more...), append(dead, moreDead...)
	}
	if len(short) > 0 {
		last = nil // rows read without a lock: they may still change
	}
	return a.settle(ctx, ws, dead, last)
}

// queueLocks adds to b one lock statement per table (children first, as a
// write round locks) for the rows that the items (updates and deletes)
// change, and returns how many it added.
func (a *applier) queueLocks(ctx context.Context, b *pgconn.Batch, items []item) (int, error) {
	byPend := map[*pending][]int32{}
	var ps []*pending
	for _, it := range items {
		if _, ok := byPend[it.p]; !ok {
			ps = append(ps, it.p)
		}
		byPend[it.p] = append(byPend[it.p], it.ei)
	}
	slices.SortFunc(ps, func(x, y *pending) int { return lockOrder(x.t, y.t) })
	for _, p := range ps {
		name, err := a.stmts.name(ctx, p.t.sql["lock"])
		if err != nil {
			return 0, err
		}
		args := a.encodeKeys(p.t, p, byPend[p], true, nil)
		b.ExecPrepared(name, args, formats(len(args)), nil)
	}
	return len(ps), nil
}

// tableWrites are the merge results for one table, written in bulk.
type tableWrites struct {
	upserts [][]*[]byte // values in table.all order (nil = NULL)
	deletes [][][]byte  // key values in table.allKey order
	tombs   []tombWrite // tombstones to record (tombstone.go)
}

// write runs merge results and dead letters in one round trip (replay:
// one change, its target row locked).
func (a *applier) write(ctx context.Context, tables []*table, writes map[*table]*tableWrites, dead []deadLetter) error {
	b := &pgconn.Batch{}
	n := 0
	for _, t := range tables {
		w := writes[t]
		if w == nil {
			continue
		}
		if len(w.upserts) > 0 {
			var args [][]byte
			for i := range t.all {
				arr := a.array()
				for _, row := range w.upserts {
					if row[i] == nil {
						arr.addNull()
					} else {
						arr.add(*row[i])
					}
				}
				args = append(args, arr.bytes())
			}
			name, err := a.stmts.name(ctx, t.sql["upsert"])
			if err != nil {
				return err
			}
			b.ExecPrepared(name, args, formats(len(args)), nil)
			n++
		}
		if len(w.deletes) > 0 {
			var args [][]byte
			for j := range t.allKey {
				arr := a.array()
				for _, key := range w.deletes {
					arr.add(key[j])
				}
				args = append(args, arr.bytes())
			}
			name, err := a.stmts.name(ctx, t.sql["deletekey"])
			if err != nil {
				return err
			}
			b.ExecPrepared(name, args, formats(len(args)), nil)
			n++
		}
		k, err := a.queueTombstones(ctx, b, t, w)
		if err != nil {
			return err
		}
		n += k
	}
	for _, d := range dead {
		queueDeadLetter(b, a.s.feed, d)
		n++
	}
	if n == 0 {
		return nil
	}
	if _, err := a.pg.ExecBatch(ctx, b).ReadAll(); err != nil {
		return fmt.Errorf("write merge results: %w", err)
	}
	return nil
}
