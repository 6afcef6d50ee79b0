package sink

import (
	"errors"
	"sync"
	"unsafe"

	"github.com/jackc/pglogrepl"
)

// relation is a source table as pgoutput last described it. A Relation
// message for the same id replaces it with a new value, so a decoded change
// keeps pointing at the description it was decoded with.
type relation struct {
	id        uint32
	namespace string
	name      string
	identity  byte // replica identity: 'f' full, 'd' default, 'i' index, 'n' nothing
	cols      []relColumn
}

type relColumn struct {
	name  string
	typ   uint32
	flags byte
}

// field is one column value of a decoded tuple: kind 't' (text in buf[off:off+n]),
// 'n' (NULL) or 'u' (an unchanged TOASTed value that was not sent).
type field struct {
	off, n int32
	kind   byte
}

// change is one decoded row change. old and new index the first field of a
// tuple in segment.fields (-1: no tuple).
type change struct {
	rel  *relation
	op   byte // 'I', 'U', 'D'
	old  int32
	new  int32
	meta int32 // index in segment.metas
}

// txnMeta is what a merge learns about the source transaction of a change.
type txnMeta struct {
	lsn        pglogrepl.LSN // commit position (Begin.FinalLSN)
	commitTime int64         // microseconds since 2000-01-01
}

// commit marks the end of a source transaction inside a segment.
type commit struct {
	lsn        pglogrepl.LSN // commit record position, the checkpoint value
	end        pglogrepl.LSN // end of the commit record, confirmed to the source
	commitTime int64
}

// truncate is a TRUNCATE in the source stream; it is applied after the
// changes before it (at index at) and before those after it.
type truncate struct {
	at             int
	rels           []*relation
	cascade, ident bool
	meta           int32
}

// segment is a unit of work handed from the stream reader to the applier:
// one whole source transaction, or one chunk of a large one (partial), or
// only a position the applier may mark as processed (marker).
type segment struct {
	buf     []byte
	fields  []field
	changes []change
	metas   []txnMeta
	commits []commit
	truncs  []truncate
	partial bool
	marker  pglogrepl.LSN
}

func (s *segment) reset() {
	s.buf = s.buf[:0]
	s.fields = s.fields[:0]
	s.changes = s.changes[:0]
	s.metas = s.metas[:0]
	s.commits = s.commits[:0]
	s.truncs = s.truncs[:0]
	s.partial = false
	s.marker = 0
}

func (s *segment) value(f field) []byte { return s.buf[f.off : f.off+f.n] }

// size is what a segment counts for against the queue's memory bound.
func (s *segment) size() int { return len(s.changes) + len(s.truncs) }

// endLSN is the highest source position the segment completes.
func (s *segment) endLSN() pglogrepl.LSN {
	e := s.marker
	if n := len(s.commits); n > 0 && s.commits[n-1].end > e {
		e = s.commits[n-1].end
	}
	return e
}

// errQueueClosed ends a queue's users when the session stops.
var errQueueClosed = errors.New("session stopped")

// queue hands segments from the reader to the applier. It bounds the rows
// held (the reader waits when it is full), and the applier takes whatever is
// ready without waiting for more: under load, groups grow by themselves;
// when idle, every transaction is applied at once.
type queue struct {
	mu        sync.Mutex
	notEmpty  sync.Cond
	notFull   sync.Cond
	segs      []*segment
	rows      int
	limit     int
	err       error
	free      []*segment
	freeBytes int
	// direct, when set, takes each segment on the reader's goroutine
	// instead of queueing it (Config.Discard: no hand-over, no wake-ups).
	direct func(*segment)
}

func newQueue(limit int) *queue {
	q := &queue{limit: limit}
	q.notEmpty.L = &q.mu
	q.notFull.L = &q.mu
	return q
}

// get returns an empty segment, reusing a recycled one when possible.
func (q *queue) get() *segment {
	q.mu.Lock()
	defer q.mu.Unlock()
	if n := len(q.free); n > 0 {
		s := q.free[n-1]
		q.free = q.free[:n-1]
		q.freeBytes -= s.capBytes()
		return s
	}
	return &segment{}
}

// maxFreeBytes bounds the memory recycled segments keep.
const maxFreeBytes = 32 << 20

// recycle returns segments the applier is done with, keeping them for
// reuse (so a steady stream allocates nothing) within maxFreeBytes.
func (q *queue) recycle(segs []*segment) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, s := range segs {
		n := s.capBytes()
		if q.freeBytes+n > maxFreeBytes {
			continue
		}
		s.reset()
		q.free = append(q.free, s)
		q.freeBytes += n
	}
}

func (s *segment) capBytes() int {
	return cap(s.buf) + cap(s.fields)*int(unsafe.Sizeof(field{})) + cap(s.changes)*int(unsafe.Sizeof(change{})) +
		cap(s.metas)*int(unsafe.Sizeof(txnMeta{})) + cap(s.commits)*int(unsafe.Sizeof(commit{})) + 256
}

// push appends a segment, waiting while the queue holds its limit.
func (q *queue) push(s *segment) error {
	if q.direct != nil {
		q.direct(s)
		q.recycle([]*segment{s})
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.err == nil && q.rows >= q.limit && len(q.segs) > 0 {
		q.notFull.Wait()
	}
	if q.err != nil {
		return q.err
	}
	q.segs = append(q.segs, s)
	q.rows += s.size()
	q.notEmpty.Signal()
	return nil
}

// take waits for at least one segment and returns the ready ones, up to
// maxTxns whole transactions and about maxRows changes. It appends to dst.
func (q *queue) take(dst []*segment, maxTxns, maxRows int) ([]*segment, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.err == nil && len(q.segs) == 0 {
		q.notEmpty.Wait()
	}
	return q.takeLocked(dst, maxTxns, maxRows)
}

// takeMore adds ready segments to a group without waiting, within what is
// left of the group's budget.
func (q *queue) takeMore(dst []*segment, maxTxns, maxRows int) ([]*segment, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, s := range dst {
		maxTxns -= len(s.commits)
		maxRows -= s.size()
	}
	return q.takeLocked(dst, maxTxns, maxRows)
}

func (q *queue) takeLocked(dst []*segment, maxTxns, maxRows int) ([]*segment, error) {
	if q.err != nil {
		return dst, q.err
	}
	first := len(dst) == 0
	txns, rows, n := 0, 0, 0
	for n < len(q.segs) {
		s := q.segs[n]
		if !(first && n == 0) && (txns+len(s.commits) > maxTxns || rows+s.size() > maxRows) {
			break
		}
		txns += len(s.commits)
		rows += s.size()
		dst = append(dst, s)
		n++
		if s.partial {
			// A chunk of a large transaction is applied on its own, so the
			// rows held stay bounded by one chunk.
			break
		}
	}
	q.segs = append(q.segs[:0], q.segs[n:]...)
	q.rows -= rows
	q.notFull.Broadcast()
	return dst, nil
}

// close wakes everyone with err.
func (q *queue) close(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err == nil {
		q.err = err
	}
	q.notEmpty.Broadcast()
	q.notFull.Broadcast()
}
