package sink

import (
	"errors"
	"sync"
)

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
