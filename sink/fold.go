package sink

import (
	"bytes"
	"context"
	"fmt"
	"hash/maphash"
)

// entry is the net effect, within one flush, of the changes to one row:
// the first before-image and the last after-image.
type entry struct {
	op     byte // opInsert, opUpdate, opDelete; 0 when the changes cancelled out
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
	if c.op == opInsert || keyTup < 0 {
		keyTup = c.new
	}
	if c.op == opUpdate && c.old >= 0 && !sameKey(t, s, c.old, s, c.new) {
		// A key change is not folded with anything: write what is
		// pending, then this change alone. (Whatever the replica
		// identity: with the default one the old tuple holds only the key,
		// and comes only when the key changed.)
		if err := a.flush(ctx); err != nil {
			return err
		}
		p = a.pend[t]
		if p == nil {
			p = &pending{t: t, idx: map[uint64]int32{}}
			a.pend[t] = p
		}
		p.ents = append(p.ents, entry{op: opUpdate, oldSeg: s, old: c.old, newSeg: s, new: c.new, keySeg: s, key: c.old, meta: meta, next: -1})
		return a.flush(ctx)
	}
	if c.new >= 0 {
		for ci := range t.cols {
			if s.fields[c.new+int32(t.srcIdx[ci])].kind == fieldToast {
				// Only REPLICA IDENTITY FULL sends the old value to fill
				// in; without it the target keeps its own (toast.go).
				return a.applyToasted(ctx, t, s, c, keyTup)
			}
		}
	}
	for _, k := range t.keys {
		if s.fields[keyTup+int32(t.srcIdx[k])].kind != fieldText {
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
		case e.op == opInsert && c.op == opUpdate:
			e.newSeg, e.new = s, c.new
		case e.op == opInsert && c.op == opDelete:
			// Not nothing: the delete still leaves its tombstone, so
			// it goes out as a delete of a row the target lacks.
			e.op, e.oldSeg, e.old, e.newSeg, e.new = opDelete, s, c.old, nil, -1
		case e.op == opUpdate && c.op == opUpdate:
			e.newSeg, e.new = s, c.new
		case e.op == opUpdate && c.op == opDelete:
			// The delete's old row is what the source deleted (the
			// update's new image, with its clock): a target that changed
			// the row meanwhile merges with that, as the source merges the
			// target's change with its tombstone of it. The update's
			// before-image would make the target's change look later than
			// the delete where the source finds the two concurrent.
			e.op, e.oldSeg, e.old, e.newSeg, e.new = opDelete, s, c.old, nil, -1
		case e.op == opDelete && c.op == opInsert:
			e.op, e.newSeg, e.new = opUpdate, s, c.new
		case e.op == 0 && c.op == opInsert:
			e.op, e.oldSeg, e.old, e.newSeg, e.new = opInsert, nil, -1, s, c.new
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
