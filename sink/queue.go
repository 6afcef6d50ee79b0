package sink

import (
	"errors"
	"sync"
	"sync/atomic"
)

// errQueueClosed ends a queue's users when the session stops.
var errQueueClosed = errors.New("session stopped")

// queue hands segments from the reader to the applier. It bounds the rows
// and the bytes held (the reader waits when either is full), and the
// applier takes whatever is ready without waiting for more: under load,
// groups grow by themselves; when idle, every transaction is applied at once.
type queue struct {
	mu         sync.Mutex
	notEmpty   sync.Cond
	notFull    sync.Cond
	segs       []*segment
	rows       int
	bytes      int64
	limit      int
	limitBytes int64
	err        error
	free       []*segment
	freeBytes  int
	stats      *queueStats
	// direct, when set, takes each segment on the reader's goroutine
	// instead of queueing it (Config.Discard: no hand-over, no wake-ups).
	direct func(*segment)
}

// queueStats are the high-water marks of a feed's queues, kept across
// sessions: what the byte bound held to.
type queueStats struct {
	// peakBytes is the most bytes (segment.bytes) a queue held.
	peakBytes atomic.Int64
	// peakSegment is the largest segment queued: a chunk's size.
	peakSegment atomic.Int64
}

func (st *queueStats) observe(queued, seg int64) {
	for {
		p := st.peakBytes.Load()
		if queued <= p || st.peakBytes.CompareAndSwap(p, queued) {
			break
		}
	}
	for {
		p := st.peakSegment.Load()
		if seg <= p || st.peakSegment.CompareAndSwap(p, seg) {
			break
		}
	}
}

// newQueue makes a queue holding at most about rows row changes and at
// most limitBytes bytes (a single larger segment is let through alone).
func newQueue(rows int, limitBytes int64) *queue {
	q := &queue{limit: rows, limitBytes: limitBytes}
	q.notEmpty.L = &q.mu
	q.notFull.L = &q.mu
	return q
}

// newQueue makes a session's queue: twice a group's bounds, so the reader
// fills the next group while the applier writes one.
func (s *Sink) newQueue() *queue {
	q := newQueue(2*s.opts.BatchRows, 2*s.opts.BatchBytes)
	q.stats = &s.queueStats
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
		q.recycleLocked(s)
	}
}

func (q *queue) recycleLocked(s *segment) {
	n := s.capBytes()
	if q.freeBytes+n > maxFreeBytes {
		return
	}
	s.reset()
	q.free = append(q.free, s)
	q.freeBytes += n
}

// push appends a segment, waiting while the queue holds its limit of rows
// or has no room for the segment's bytes.
func (q *queue) push(s *segment) error {
	if q.direct != nil {
		q.direct(s)
		q.recycle([]*segment{s})
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if n := len(q.segs); n > 0 && s.isMarker() && q.segs[n-1].isMarker() {
		// Positions only: the later one says all the earlier one does, so
		// a run of skipped transactions holds one segment.
		if s.marker > q.segs[n-1].marker {
			q.segs[n-1].marker = s.marker
		}
		q.recycleLocked(s)
		return nil
	}
	b := s.bytes()
	for q.err == nil && len(q.segs) > 0 && (q.rows >= q.limit || q.bytes+b > q.limitBytes) {
		q.notFull.Wait()
	}
	if q.err != nil {
		return q.err
	}
	q.segs = append(q.segs, s)
	q.rows += s.size()
	q.bytes += b
	if q.stats != nil {
		q.stats.observe(q.bytes, b)
	}
	q.notEmpty.Signal()
	return nil
}

// groupBounds are what one group may take: whole transactions, rows and bytes.
type groupBounds struct {
	txns, rows int
	bytes      int64
}

// take waits for at least one segment and returns the ready ones, up to
// the bounds (the first segment is always taken). It appends to dst.
func (q *queue) take(dst []*segment, lim groupBounds) ([]*segment, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.err == nil && len(q.segs) == 0 {
		q.notEmpty.Wait()
	}
	return q.takeLocked(dst, lim, false)
}

// takeMore adds ready segments to a group without waiting, within what is
// left of the group's bounds; whole: only whole transactions (it stops
// before a chunk of a large one, which would hold the group's commit back
// until that transaction's last chunk).
func (q *queue) takeMore(dst []*segment, lim groupBounds, whole bool) ([]*segment, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, s := range dst {
		lim.txns -= len(s.commits)
		lim.rows -= s.size()
		lim.bytes -= s.bytes()
	}
	return q.takeLocked(dst, lim, whole)
}

func (q *queue) takeLocked(dst []*segment, lim groupBounds, whole bool) ([]*segment, error) {
	if q.err != nil {
		return dst, q.err
	}
	first := len(dst) == 0
	txns, rows, n := 0, 0, 0
	var bytes int64
	for n < len(q.segs) {
		s := q.segs[n]
		b := s.bytes()
		if !(first && n == 0) && (txns+len(s.commits) > lim.txns || rows+s.size() > lim.rows || bytes+b > lim.bytes || whole && s.partial) {
			break
		}
		txns += len(s.commits)
		rows += s.size()
		bytes += b
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
	q.bytes -= bytes
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
