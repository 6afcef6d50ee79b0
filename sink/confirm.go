package sink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// copyDataByte starts a CopyData message, which carries every replication
// message in both directions.
const copyDataByte = 'd'

// sendStatus reports lsn as written, flushed and applied.
func (s *stream) sendStatus(lsn pglogrepl.LSN, replyRequested bool) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	b := s.wbuf[:0]
	b = append(b, copyDataByte, 0, 0, 0, 0, pglogrepl.StandbyStatusUpdateByteID)
	b = binary.BigEndian.AppendUint64(b, uint64(lsn))
	b = binary.BigEndian.AppendUint64(b, uint64(lsn))
	b = binary.BigEndian.AppendUint64(b, uint64(lsn))
	b = binary.BigEndian.AppendUint64(b, uint64(time.Since(pgEpoch).Microseconds()))
	if replyRequested {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	binary.BigEndian.PutUint32(b[1:5], uint32(len(b)-1))
	s.wbuf = b
	if _, err := s.w.Write(b); err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	return nil
}

// answerTimeout bounds how long a session waits for each answer of its
// monitors (the source's WAL position, each target's flushed position;
// asked at least every askEvery), and setupTimeout each step of its setup
// (a target's sessions, the source's monitor, the stream), whose own
// connect timeout (connectTimeout) ends first. A silent network partition
// (packets dropped, nothing closed) or a hung server ends the session
// after it, where TCP would take minutes to say so, and the feed
// reconnects as after any outage. The monitors' questions read a position
// and take no lock: a busy server answers them in milliseconds. A shared
// slot's control steps (fanout.go: its lock, the members, a handover, a
// detach) are bounded the same way, a question on an open connection by
// answerTimeout and a step that connects by setupTimeout, so that a silent
// source cannot hold up the Fanout's loop, which runs every feed of the slot.
const (
	answerTimeout = 10 * time.Second
	setupTimeout  = 2 * answerTimeout
	askEvery      = time.Second
)

// silenceError is a question left unanswered (see answerTimeout).
type silenceError struct {
	end   string
	after time.Duration
}

func (e *silenceError) Error() string {
	return fmt.Sprintf("%s did not answer for %s (a silent network partition or a hung server)", e.end, e.after)
}

// ask runs q with a deadline of its own, d from now; q cut off by it while
// ctx still runs is a silenceError of end.
func ask(ctx context.Context, end string, d time.Duration, q func(context.Context) error) error {
	qctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	err := q(qctx)
	if err != nil && ctx.Err() == nil && errors.Is(qctx.Err(), context.DeadlineExceeded) {
		return &silenceError{end: end, after: d}
	}
	return err
}

// walEndBox holds the source's WAL position as last seen (polled, or
// reported by the walsender's keepalives).
type walEndBox struct {
	mu  sync.Mutex
	lsn pglogrepl.LSN
}

func (w *walEndBox) set(l pglogrepl.LSN) {
	w.mu.Lock()
	if l > w.lsn {
		w.lsn = l
	}
	w.mu.Unlock()
}

// poll asks the source for its WAL write position.
func (w *walEndBox) poll(ctx context.Context, src *pgx.Conn) error {
	var text string
	if err := src.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&text); err != nil {
		return fmt.Errorf("source WAL position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(text)
	if err != nil {
		return err
	}
	w.set(lsn)
	return nil
}

func (w *walEndBox) get() pglogrepl.LSN {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lsn
}

// tracker holds applied source positions until the target's WAL is
// flushed past the commit that recorded them.
type tracker struct {
	mu        sync.Mutex
	floor     pglogrepl.LSN // target position flushed before anything is confirmed
	lastT     pglogrepl.LSN
	pend      []confirmEntry
	flushed   pglogrepl.LSN // target WAL flushed, as last seen
	confirmed pglogrepl.LSN
	asked     time.Time // when the target's flush position was last asked for
}

type confirmEntry struct{ target, source pglogrepl.LSN }

// add records that source is applied once the target flushed target
// (0: no new commit; the previous one's position applies).
func (t *tracker) add(target, source pglogrepl.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if target == 0 {
		target = t.lastT
	}
	if target < t.floor {
		target = t.floor
	}
	t.lastT = target
	t.pend = append(t.pend, confirmEntry{target, source})
}

// confirmable returns the source position that may be confirmed, asking
// the target how far its WAL is flushed when that matters.
func (t *tracker) confirmable(ctx context.Context, mon *pgx.Conn) (pglogrepl.LSN, error) {
	t.mu.Lock()
	// Asked also when nothing waits, at most every askEvery: the answer
	// is what tells a silent target (see answerTimeout) from an idle one.
	need := len(t.pend) > 0 && t.pend[0].target > t.flushed || time.Since(t.asked) >= askEvery
	if need {
		t.asked = time.Now()
	}
	t.mu.Unlock()
	if need && mon != nil {
		var text string
		if err := mon.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn()::text`).Scan(&text); err != nil {
			return 0, fmt.Errorf("target WAL flush position: %w", err)
		}
		f, err := pglogrepl.ParseLSN(text)
		if err != nil {
			return 0, err
		}
		t.mu.Lock()
		t.flushed = f
		t.mu.Unlock()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for n < len(t.pend) && (mon == nil || t.pend[n].target <= t.flushed) {
		if t.pend[n].source > t.confirmed {
			t.confirmed = t.pend[n].source
		}
		n++
	}
	t.pend = append(t.pend[:0], t.pend[n:]...)
	return t.confirmed, nil
}

// statusLoop sends standby status updates for a session's feeds: every
// second, at once when the source asks, and more often while someone waits
// for a feed to catch up (each update makes an idle source report its
// position again).
func statusLoop(ctx context.Context, st *stream, ms []*member, srcMon *pgx.Conn, reply <-chan struct{}, walEnd *walEndBox) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-reply:
		case <-timer.C:
		}
		lsn, err := confirmable(ctx, ms)
		if err != nil {
			return err
		}
		if err := st.sendStatus(lsn, false); err != nil {
			return err
		}
		if err := ask(ctx, "the source", answerTimeout, func(ctx context.Context) error { return walEnd.poll(ctx, srcMon) }); err != nil {
			return err
		}
		fast := false
		for _, m := range ms {
			fast = m.s.noteLag(walEnd.get()) || fast
		}
		if fast {
			timer.Reset(50 * time.Millisecond)
		} else {
			timer.Reset(time.Second)
		}
	}
}

// confirmable is the source position the session's slot may be confirmed
// at: the least that every feed may confirm. Until each feed of this
// session has confirmed something it is 0, which the walsender ignores (the
// update only keeps the connection alive): a checkpoint a stream started
// from may lie below the slot's confirmed position (echoes and other
// skipped transactions are confirmed without moving the checkpoint), and
// PostgreSQL 15 would move the slot back to it. Each target's answer is
// awaited for answerTimeout; an error is the feed's (feedError) in a
// session of several.
func confirmable(ctx context.Context, ms []*member) (pglogrepl.LSN, error) {
	var least pglogrepl.LSN
	for i, m := range ms {
		// Every tracker, also after a 0: each lets go of what its
		// target has flushed.
		var lsn pglogrepl.LSN
		err := ask(ctx, "the target", answerTimeout, func(ctx context.Context) (err error) {
			lsn, err = m.tr.confirmable(ctx, m.mon)
			return err
		})
		if err != nil {
			if len(ms) > 1 {
				err = &feedError{s: m.s, err: err}
			}
			return 0, err
		}
		if i == 0 || lsn < least {
			least = lsn
		}
	}
	return least, nil
}

// noteLag records how far the feed is behind the source's WAL end and
// reports whether someone waits for it near the end.
func (s *Sink) noteLag(end pglogrepl.LSN) (fast bool) {
	s.mu.Lock()
	var lagBytes int64
	if end > s.st.ProcessedLSN && s.st.ProcessedLSN > 0 {
		lagBytes = int64(end - s.st.ProcessedLSN)
	}
	// Near the end only: each update makes the walsender work (and write
	// the slot), which would slow a catch-up.
	fast = s.waiters > 0 && lagBytes < 256<<10
	s.st.LagBytes = lagBytes
	s.mu.Unlock()
	s.m.lagBytes(lagBytes)
	return fast
}
