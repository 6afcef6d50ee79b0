package sink

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// Bytes of the pgoutput protocol that pglogrepl has no name for: the
// markers before a tuple in an insert, update or delete message.
const (
	tupleNew = 'N' // the new row
	tupleKey = 'K' // the old row's replica identity key
	tupleOld = 'O' // the whole old row (REPLICA IDENTITY FULL)
)

// readerHooks connect the reader to the rest of the session.
type readerHooks struct {
	// skipUpTo: source transactions committed at or before it are applied already.
	skipUpTo pglogrepl.LSN
	// echoOrigin: transactions with this replication origin are echoes.
	echoOrigin string
	// chunkRows, chunkBytes: a transaction larger than either is handed
	// over in chunks (chunkBytes 0: no byte bound).
	chunkRows  int
	chunkBytes int64
	// onWALEnd is told how far the walsender has decoded (keepalives).
	onWALEnd func(pglogrepl.LSN)
	// sourceEnd is the source's WAL position, as last polled.
	sourceEnd func() pglogrepl.LSN
	// onBehind is told whether the stream is far behind the source.
	onBehind func(bool)
	// onReply is called when the server asks for an immediate status reply.
	onReply func()
	// onSkip counts echo transactions skipped.
	onSkip func()
}

// decoder turns the pgoutput stream into segments.
type decoder struct {
	q     *queue
	h     readerHooks
	rels  map[uint32]*relation
	cur   *segment
	inTxn bool
	skip  bool
	meta  txnMeta
	// lastMarker avoids queueing a marker for every keepalive at one position.
	lastMarker pglogrepl.LSN
}

func newDecoder(q *queue, h readerHooks) *decoder {
	return &decoder{q: q, h: h, rels: map[uint32]*relation{}}
}

// run reads until the connection fails or closes.
func (d *decoder) run(s *stream) error {
	for {
		b, err := s.next()
		if err != nil {
			return err
		}
		if err := d.copyData(b); err != nil {
			return err
		}
	}
}

// consume decodes the messages fanOut hands over, until it closes in.
func (d *decoder) consume(in <-chan []byte) error {
	for b := range in {
		if err := d.copyData(b); err != nil {
			return err
		}
	}
	return errQueueClosed
}

// fanOutBuffer is how many messages a feed's decoder may lag behind the
// stream before fanOut waits for it.
const fanOutBuffer = 1024

// fanOut hands each message of the stream to every feed's decoder, in
// order. The decoders only read a message and copy what they keep, so one
// copy serves them all. It switches the stream's reading between catch-up
// and normal itself (setBehind runs on the reader's goroutine, and the
// decoders, each at its own position, would disagree).
//
// A feed that takes nothing for stallAfter (> 0) holds every other feed
// back: fanOut ends with stalled's error for it.
func fanOut(ctx context.Context, s *stream, outs []chan []byte, sourceEnd func() pglogrepl.LSN,
	stallAfter time.Duration, stalled func(i int, since time.Time) error) error {
	defer func() {
		for _, out := range outs {
			close(out)
		}
	}()
	// One timer for every wait (stopped, it delivers nothing stale).
	var timer *time.Timer
	if stallAfter > 0 {
		timer = time.NewTimer(stallAfter)
		timer.Stop()
	}
	for {
		b, err := s.next()
		if err != nil {
			return err
		}
		watchBehind(b, sourceEnd, s.setBehind)
		b = bytes.Clone(b)
		for i, out := range outs {
			select {
			case out <- b:
				continue
			default:
			}
			var stall <-chan time.Time
			if timer != nil {
				timer.Reset(stallAfter)
				stall = timer.C
			}
			since := time.Now()
			select {
			case out <- b:
			case <-ctx.Done():
				return ctx.Err()
			case <-stall:
				return stalled(i, since)
			}
			if timer != nil {
				timer.Stop()
			}
		}
	}
}

func (d *decoder) copyData(b []byte) error {
	if len(b) == 0 {
		return errors.New("empty replication message")
	}
	switch b[0] {
	case pglogrepl.XLogDataByteID:
		if len(b) < 25 {
			return errors.New("short XLogData message")
		}
		watchBehind(b, d.h.sourceEnd, d.h.onBehind)
		return d.message(b[25:])
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		if len(b) < 18 {
			return errors.New("short keepalive message")
		}
		walEnd := pglogrepl.LSN(binary.BigEndian.Uint64(b[1:]))
		if d.h.onWALEnd != nil {
			d.h.onWALEnd(walEnd)
		}
		watchBehind(b, d.h.sourceEnd, d.h.onBehind)
		if !d.inTxn && walEnd > d.lastMarker {
			// Everything before walEnd has been sent: once what is queued
			// is applied, the feed has processed the source up to here.
			d.lastMarker = walEnd
			if err := d.pushMarker(walEnd); err != nil {
				return err
			}
		}
		if b[17] == 1 && d.h.onReply != nil {
			d.h.onReply()
		}
	}
	return nil
}

// watchBehind tells onBehind (nil: nobody) whether the stream is far
// behind its source, from a message of the stream. A logical walsender
// puts the record's own position in both header fields of XLogData; how
// far the source is ahead comes from sourceEnd, which the session polls. A
// keepalive means the source has nothing more to send.
func watchBehind(b []byte, sourceEnd func() pglogrepl.LSN, onBehind func(bool)) {
	if onBehind == nil || len(b) == 0 {
		return
	}
	switch {
	case b[0] == pglogrepl.XLogDataByteID && len(b) >= 25 && sourceEnd != nil:
		at := pglogrepl.LSN(binary.BigEndian.Uint64(b[1:]))
		switch end := sourceEnd(); {
		case end > at+behindEnter:
			onBehind(true)
		case end < at+behindLeave:
			onBehind(false)
		}
	case b[0] == pglogrepl.PrimaryKeepaliveMessageByteID:
		onBehind(false)
	}
}

func (d *decoder) pushMarker(lsn pglogrepl.LSN) error {
	s := d.q.get()
	s.marker = lsn
	return d.q.push(s)
}

// msgReader walks a pgoutput message.
type msgReader struct {
	b   []byte
	err error
}

func (r *msgReader) need(n int) bool {
	if r.err != nil {
		return false
	}
	if len(r.b) < n {
		r.err = errors.New("truncated pgoutput message")
		return false
	}
	return true
}

func (r *msgReader) u8() byte {
	if !r.need(1) {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *msgReader) u16() uint16 {
	if !r.need(2) {
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *msgReader) u32() uint32 {
	if !r.need(4) {
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *msgReader) u64() uint64 {
	if !r.need(8) {
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *msgReader) str() string {
	if r.err != nil {
		return ""
	}
	for i, c := range r.b {
		if c == 0 {
			s := string(r.b[:i])
			r.b = r.b[i+1:]
			return s
		}
	}
	r.err = errors.New("unterminated string in pgoutput message")
	return ""
}

func (d *decoder) message(b []byte) error {
	if len(b) == 0 {
		return errors.New("empty pgoutput message")
	}
	r := &msgReader{b: b[1:]}
	var err error
	switch pglogrepl.MessageType(b[0]) {
	case pglogrepl.MessageTypeBegin:
		final := pglogrepl.LSN(r.u64())
		ts := int64(r.u64())
		r.u32() // xid
		d.inTxn = true
		d.meta = txnMeta{lsn: final, commitTime: ts}
		d.skip = final <= d.h.skipUpTo
		if !d.skip {
			d.startSegment()
		}
	case pglogrepl.MessageTypeOrigin:
		r.u64()
		name := r.str()
		if d.inTxn && d.h.echoOrigin != "" && name == d.h.echoOrigin && !d.skip {
			d.skip = true
			if d.h.onSkip != nil {
				d.h.onSkip()
			}
			if d.cur != nil {
				d.q.recycle([]*segment{d.cur})
				d.cur = nil
			}
		}
	case pglogrepl.MessageTypeCommit:
		r.u8() // flags
		lsn := pglogrepl.LSN(r.u64())
		end := pglogrepl.LSN(r.u64())
		ts := int64(r.u64())
		if r.err != nil {
			break
		}
		d.inTxn = false
		if d.skip || d.cur == nil {
			d.skip = false
			// Nothing to apply, but the position is processed once the
			// transactions before it are.
			return d.pushMarker(end)
		}
		s := d.cur
		d.cur = nil
		s.commits = append(s.commits, commit{lsn: lsn, end: end, commitTime: ts})
		return d.q.push(s)
	case pglogrepl.MessageTypeRelation:
		rel := &relation{id: r.u32(), streamed: true}
		rel.namespace = r.str()
		rel.name = r.str()
		rel.identity = r.u8()
		n := int(r.u16())
		if r.err == nil {
			rel.cols = make([]relColumn, n)
			for i := range rel.cols {
				rel.cols[i].flags = r.u8()
				rel.cols[i].name = r.str()
				rel.cols[i].typ = r.u32()
				rel.cols[i].typmod = r.u32()
			}
		}
		// pgoutput describes a relation again after any invalidation of
		// its cache entry (an ANALYZE or autovacuum of the table at the
		// source), most often unchanged: the description already held is
		// kept then. A new one is a new table to the applier, which
		// writes what is pending first: that cut a group's writes in two,
		// and the second's rows were locked after the first's, out of key
		// order.
		if old := d.rels[rel.id]; r.err == nil && (old == nil || !old.same(rel)) {
			d.rels[rel.id] = rel
		}
	case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete:
		err = d.change(b[0], r)
	case pglogrepl.MessageTypeTruncate:
		err = d.truncate(r)
	case pglogrepl.MessageTypeType, pglogrepl.MessageTypeMessage:
		// Type descriptions are not needed (the target's catalog gives
		// types); logical messages are not votr's.
	default:
		return fmt.Errorf("unexpected pgoutput message %q", b[0])
	}
	if r.err != nil {
		return fmt.Errorf("pgoutput %q message: %w", b[0], r.err)
	}
	return err
}

func (d *decoder) startSegment() {
	d.cur = d.q.get()
	d.cur.metas = append(d.cur.metas, d.meta)
}

func (d *decoder) change(op byte, r *msgReader) error {
	relID := r.u32()
	if !d.inTxn {
		return fmt.Errorf("row change outside a transaction")
	}
	if d.skip {
		return nil
	}
	rel := d.rels[relID]
	if rel == nil {
		return fmt.Errorf("row change for relation %d before its description", relID)
	}
	if len(d.cur.changes) >= d.h.chunkRows || (d.h.chunkBytes > 0 && d.cur.bytes() >= d.h.chunkBytes) {
		if err := d.flushChunk(); err != nil {
			return err
		}
	}
	s := d.cur
	c := change{rel: rel, op: op, old: -1, new: -1, meta: int32(len(s.metas) - 1)}
	switch op {
	case opInsert:
		if r.u8() != tupleNew {
			return errors.New("insert without a new tuple")
		}
		c.new = d.tuple(r, rel)
	case opUpdate:
		k := r.u8()
		full := k == tupleOld
		if k == tupleKey || k == tupleOld {
			c.old = d.tuple(r, rel)
			k = r.u8()
		}
		if k != tupleNew {
			return errors.New("update without a new tuple")
		}
		c.new = d.tuple(r, rel)
		if full && r.err == nil {
			// An unchanged TOASTed value equals the old row's, which
			// carries it with REPLICA IDENTITY FULL. A key tuple (a key
			// change under another identity) sends the other columns as
			// NULL: nothing to fill in from it.
			n := int32(len(rel.cols))
			for i := int32(0); i < n; i++ {
				if s.fields[c.new+i].kind == fieldToast && s.fields[c.old+i].kind != fieldToast {
					s.fields[c.new+i] = s.fields[c.old+i]
				}
			}
		}
	case opDelete:
		k := r.u8()
		if k != tupleKey && k != tupleOld {
			return errors.New("delete without an old tuple")
		}
		c.old = d.tuple(r, rel)
	}
	if r.err != nil {
		return r.err
	}
	s.changes = append(s.changes, c)
	return nil
}

// flushChunk hands over the part of a large transaction read so far.
func (d *decoder) flushChunk() error {
	s := d.cur
	s.partial = true
	if err := d.q.push(s); err != nil {
		return err
	}
	d.startSegment()
	return nil
}

// tuple copies a TupleData into the current segment; it returns the index
// of its first field. Columns beyond the relation's are an error.
func (d *decoder) tuple(r *msgReader, rel *relation) int32 {
	s := d.cur
	n := int(r.u16())
	if r.err != nil {
		return -1
	}
	if n != len(rel.cols) {
		r.err = fmt.Errorf("tuple of %s.%s has %d columns, its description %d", rel.namespace, rel.name, n, len(rel.cols))
		return -1
	}
	if len(s.fields)+n > maxSegmentFields {
		r.err = errSegmentFull
		return -1
	}
	start := int32(len(s.fields))
	for i := 0; i < n; i++ {
		kind := r.u8()
		switch kind {
		case fieldNull, fieldToast:
			s.fields = append(s.fields, field{kind: kind})
		case fieldText, pglogrepl.TupleDataTypeBinary:
			l := int(r.u32())
			if !r.need(l) {
				return -1
			}
			if len(s.buf)+l > maxSegmentBytes {
				r.err = errSegmentFull
				return -1
			}
			off := len(s.buf)
			s.buf = append(s.buf, r.b[:l]...)
			r.b = r.b[l:]
			s.fields = append(s.fields, field{off: int32(off), n: int32(l), kind: fieldText})
		default:
			r.err = fmt.Errorf("unknown tuple value kind %q", kind)
			return -1
		}
	}
	return start
}

func (d *decoder) truncate(r *msgReader) error {
	n := int(r.u32())
	opts := r.u8()
	if !d.inTxn {
		return errors.New("truncate outside a transaction")
	}
	t := truncate{cascade: opts&1 != 0, ident: opts&2 != 0}
	for i := 0; i < n && r.err == nil; i++ {
		id := r.u32()
		rel := d.rels[id]
		if rel == nil && r.err == nil {
			return fmt.Errorf("truncate of relation %d before its description", id)
		}
		t.rels = append(t.rels, rel)
	}
	if d.skip || r.err != nil {
		return nil
	}
	t.at = len(d.cur.changes)
	t.meta = int32(len(d.cur.metas) - 1)
	d.cur.truncs = append(d.cur.truncs, t)
	return nil
}
