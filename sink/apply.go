package sink

import (
	"bytes"
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// entry is the net effect, within one flush, of the changes to one row:
// the first before-image and the last after-image.
type entry struct {
	op     byte // 'I', 'U', 'D'; 0 when the changes cancelled out
	oldSeg *segment
	old    int32
	newSeg *segment
	new    int32
	keySeg *segment
	key    int32
	meta   txnMeta
	next   int32 // next entry with the same key hash, -1 at the end
}

// pending collects one table's entries until they are written.
type pending struct {
	t    *table
	ents []entry
	idx  map[uint64]int32
}

// mergeError is a merge that threw, timed out or returned nonsense.
type mergeError struct {
	table, op string
	lsn       pglogrepl.LSN
	key       string
	err       error
}

func (e *mergeError) Error() string {
	return fmt.Sprintf("merge of %s on table %s (key %s) at source LSN %s failed: %v", e.op, e.table, e.key, e.lsn, e.err)
}

func (e *mergeError) Unwrap() error { return e.err }

// failureKey identifies a failing change across retries.
func (e *mergeError) failureKey() string { return e.lsn.String() + "/" + e.table + "/" + e.key }

// groupStats are the counters of the target transaction being built.
type groupStats struct {
	txns, rows, conflicts, dropped, deadLettered int64
}

// applier writes groups of source transactions into the target. It owns
// the apply connection; only its goroutine uses it.
type applier struct {
	s      *Sink
	conn   *pgx.Conn
	pg     *pgconn.PgConn
	stmts  stmtCache
	tables map[*relation]*table
	pend   map[*table]*pending
	owner  map[string]*table // the current description of each target table
	seed   maphash.Seed
	origin bool // the session has a replication origin
	// replay: every conflict goes through the script (see Replay).
	replay bool

	inTxn bool
	st    groupStats

	arrays []textArray
	nArr   int

	// deadKeys are changes whose merge failed too often: dead-letter them.
	deadKeys map[string]string
}

func newApplier(s *Sink, conn *pgx.Conn, origin bool, deadKeys map[string]string) *applier {
	return &applier{
		s: s, conn: conn, pg: conn.PgConn(),
		stmts:    stmtCache{conn: conn.PgConn(), names: map[string]string{}},
		tables:   map[*relation]*table{},
		pend:     map[*table]*pending{},
		owner:    map[string]*table{},
		seed:     maphash.MakeSeed(),
		origin:   origin,
		deadKeys: deadKeys,
	}
}

// array returns a cleared parameter buffer that stays valid until the
// current batch has run (see resetArrays).
func (a *applier) array() *textArray {
	if a.nArr == len(a.arrays) {
		a.arrays = append(a.arrays, textArray{})
	}
	arr := &a.arrays[a.nArr]
	a.nArr++
	arr.reset()
	return arr
}

func (a *applier) resetArrays() {
	a.nArr = 0
	// Drop buffers one huge statement grew, to keep memory bounded.
	for i := range a.arrays {
		if cap(a.arrays[i].buf) > 16<<20 {
			a.arrays[i].buf = nil
		}
	}
}

func (a *applier) table(ctx context.Context, rel *relation) (*table, error) {
	if t, ok := a.tables[rel]; ok {
		return t, nil
	}
	t, err := loadTable(ctx, a.conn, rel)
	if err != nil {
		return nil, err
	}
	a.tables[rel] = t
	return t, nil
}

// keyHash hashes the primary key values of a tuple.
func (a *applier) keyHash(t *table, s *segment, tup int32) uint64 {
	var h maphash.Hash
	h.SetSeed(a.seed)
	for _, k := range t.keys {
		f := s.fields[tup+int32(t.srcIdx[k])]
		h.WriteByte(f.kind)
		h.Write(s.value(f))
		h.WriteByte(0)
	}
	return h.Sum64()
}

func sameKey(t *table, s1 *segment, t1 int32, s2 *segment, t2 int32) bool {
	for _, k := range t.keys {
		i := int32(t.srcIdx[k])
		f1, f2 := s1.fields[t1+i], s2.fields[t2+i]
		if f1.kind != f2.kind || !bytes.Equal(s1.value(f1), s2.value(f2)) {
			return false
		}
	}
	return true
}

// add folds one change into the pending entries.
func (a *applier) add(ctx context.Context, s *segment, c change) error {
	t, err := a.table(ctx, c.rel)
	if err != nil {
		return err
	}
	if owner := a.owner[t.ident]; owner != t {
		// The source described the table anew (DDL): write what is
		// pending under the old description first, so changes to one row
		// keep their order.
		if owner != nil {
			if err := a.flush(ctx); err != nil {
				return err
			}
			delete(a.pend, owner)
		}
		a.owner[t.ident] = t
	}
	p := a.pend[t]
	if p == nil {
		p = &pending{t: t, idx: map[uint64]int32{}}
		a.pend[t] = p
	}
	meta := s.metas[c.meta]
	keyTup := c.old
	if c.op == 'I' || keyTup < 0 {
		keyTup = c.new
	}
	if c.op == 'U' && c.old >= 0 && t.rel.identity == 'f' && !sameKey(t, s, c.old, s, c.new) {
		// A key change is not folded with anything: write what is
		// pending, then this change alone.
		if err := a.flush(ctx); err != nil {
			return err
		}
		p = a.pend[t]
		if p == nil {
			p = &pending{t: t, idx: map[uint64]int32{}}
			a.pend[t] = p
		}
		p.ents = append(p.ents, entry{op: 'U', oldSeg: s, old: c.old, newSeg: s, new: c.new, keySeg: s, key: c.old, meta: meta, next: -1})
		return a.flush(ctx)
	}
	if c.new >= 0 {
		for ci := range t.cols {
			if s.fields[c.new+int32(t.srcIdx[ci])].kind == 'u' {
				// Only REPLICA IDENTITY FULL sends the old value to fill in.
				return &schemaError{fmt.Sprintf("an update of %s left the TOASTed column %s out and the table's old row does not carry it: set REPLICA IDENTITY FULL on the source table", t.ident, t.cols[ci].name)}
			}
		}
	}
	for _, k := range t.keys {
		if s.fields[keyTup+int32(t.srcIdx[k])].kind != 't' {
			return &schemaError{fmt.Sprintf("a %c change to %s has no value for primary key column %s (is the table's REPLICA IDENTITY FULL?)", c.op, t.ident, t.cols[k].name)}
		}
	}
	h := a.keyHash(t, s, keyTup)
	head, found := p.idx[h]
	if !found {
		head = -1
	}
	for i := head; i >= 0; i = p.ents[i].next {
		e := &p.ents[i]
		if !sameKey(t, e.keySeg, e.key, s, keyTup) {
			continue
		}
		e.meta = meta
		switch {
		case e.op == 'I' && c.op == 'U':
			e.newSeg, e.new = s, c.new
		case e.op == 'I' && c.op == 'D':
			e.op = 0
		case e.op == 'U' && c.op == 'U':
			e.newSeg, e.new = s, c.new
		case e.op == 'U' && c.op == 'D':
			e.op, e.newSeg, e.new = 'D', nil, -1
		case e.op == 'D' && c.op == 'I':
			e.op, e.newSeg, e.new = 'U', s, c.new
		case e.op == 0 && c.op == 'I':
			e.op, e.oldSeg, e.old, e.newSeg, e.new = 'I', nil, -1, s, c.new
		default:
			// Impossible in a consistent stream (e.g. two inserts of one
			// key); keep the latest change and let the target decide.
			e.op, e.oldSeg, e.old, e.newSeg, e.new = c.op, s, c.old, s, c.new
			if c.old < 0 {
				e.oldSeg = nil
			}
		}
		return nil
	}
	e := entry{op: c.op, old: c.old, new: c.new, keySeg: s, key: keyTup, meta: meta, next: head}
	if c.old >= 0 {
		e.oldSeg = s
	}
	if c.new >= 0 {
		e.newSeg = s
	}
	p.idx[h] = int32(len(p.ents))
	p.ents = append(p.ents, e)
	return nil
}

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
		arr := a.array()
		si := int32(t.srcIdx[ci])
		for _, ei := range ents {
			e := &p.ents[ei]
			seg, tup := e.newSeg, e.new
			if old {
				seg, tup = e.oldSeg, e.old
			}
			if seg == nil || tup < 0 {
				// No before-image (non-FULL identity without a key change):
				// the key is in the new tuple and the rest is not compared.
				seg, tup = e.newSeg, e.new
			}
			f := seg.fields[tup+si]
			if f.kind == 't' {
				arr.add(seg.value(f))
			} else {
				arr.addNull()
			}
		}
		args = append(args, arr.bytes())
	}
	return args
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

// begin queues BEGIN when no target transaction is open; it reports
// whether it did (the batch then has one more result).
func (a *applier) begin(b *pgconn.Batch) bool {
	if a.inTxn {
		return false
	}
	b.ExecParams("BEGIN", nil, nil, nil, nil)
	a.inTxn = true
	return true
}

// flush writes the pending entries inside the open target transaction
// (opening it if needed), then settles the rows that conflicted.
func (a *applier) flush(ctx context.Context) error {
	ps := a.sortedPending()
	if len(ps) == 0 {
		return nil
	}
	defer func() {
		for _, p := range ps {
			p.ents = p.ents[:0]
			clear(p.idx)
		}
		a.resetArrays()
	}()
	var ops []stmtOp
	var ins, upd, del [][]int32
	for _, p := range ps {
		var i, u, d []int32
		for ei := range p.ents {
			switch p.ents[ei].op {
			case 'I':
				i = append(i, int32(ei))
			case 'U':
				u = append(u, int32(ei))
			case 'D':
				d = append(d, int32(ei))
			}
		}
		ins, upd, del = append(ins, i), append(upd, u), append(del, d)
	}
	for pi, p := range ps {
		if len(ins[pi]) > 0 {
			ops = append(ops, stmtOp{p: p, op: 'I', ents: ins[pi], args: a.encodeTuples(p.t, p, ins[pi], false, nil)})
		}
		if len(upd[pi]) > 0 {
			args := a.encodeTuples(p.t, p, upd[pi], true, nil)
			ops = append(ops, stmtOp{p: p, op: 'U', ents: upd[pi], args: a.encodeTuples(p.t, p, upd[pi], false, args)})
		}
	}
	// Children before parents for deletes.
	for pi := len(ps) - 1; pi >= 0; pi-- {
		if len(del[pi]) > 0 {
			p := ps[pi]
			ops = append(ops, stmtOp{p: p, op: 'D', ents: del[pi], args: a.encodeTuples(p.t, p, del[pi], true, nil)})
		}
	}
	if len(ops) == 0 {
		return nil
	}
	b := &pgconn.Batch{}
	began := a.begin(b)
	for _, o := range ops {
		kind := map[byte]string{'I': "insert", 'U': "update", 'D': "delete"}[o.op]
		if o.op == 'I' && a.s.plainInserts() {
			kind = "insertplain"
		}
		name, err := a.stmts.name(ctx, o.p.t.sql[kind])
		if err != nil {
			return err
		}
		b.ExecPrepared(name, o.args, formats(len(o.args)), nil)
	}
	res, err := a.pg.ExecBatch(ctx, b).ReadAll()
	if err != nil {
		return fmt.Errorf("apply changes: %w", err)
	}
	if began {
		res = res[1:]
	}
	var short []stmtOp
	for i, o := range ops {
		if n := res[i].CommandTag.RowsAffected(); n < int64(len(o.ents)) {
			short = append(short, o)
		}
	}
	if len(short) == 0 {
		return nil
	}
	return a.settle(ctx, short)
}
