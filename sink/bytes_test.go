package sink

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/votr-dev/votr/internal/pgtest"
)

// valueBytes is the size of each large value below: TOASTed on the
// source, sent whole by pgoutput.
const valueBytes = 300_000

// Rows of large values under a small byte bound: one source transaction of
// 60 rows of 300 KB (18 MB, chunked) and 40 small transactions of one such
// row each, streamed with batchBytes 2 MiB while the row bound (10000) is
// far away. Every row arrives intact; no chunk held more than batchBytes
// plus one row, and the queue never more than twice batchBytes plus one row.
func TestLargeValuesBoundedByBytes(t *testing.T) {
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 1)
	dst := newRegion(t, srv, 0)
	createSlot(t, src, dst.id)
	big := fmt.Sprintf(`repeat(md5(i::text), %d)`, valueBytes/32)
	pgtest.Exec(t, src.dsn, `INSERT INTO candidates (candidate, name, mood)
		SELECT gen_random_uuid(), `+big+`, 'big' FROM generate_series(1, 60) i`)
	for i := 0; i < 40; i++ {
		pgtest.Exec(t, src.dsn, fmt.Sprintf(`INSERT INTO candidates (candidate, name, mood)
			SELECT gen_random_uuid(), %s, 'small' FROM generate_series(%d, %d) i`, big, 100+i, 100+i))
	}

	o := DefaultOptions()
	o.BatchBytes = 2 << 20
	r := start(t, feedConfig(t, src, dst, votrScript(t), o))
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}

	const rows = `SELECT count(*) || ':' || md5(string_agg(candidate::text || length(name) || md5(name), ',' ORDER BY candidate))
		FROM candidates WHERE mood IN ('big', 'small')`
	var want, got string
	srcConn, dstConn := connect(t, src.dsn), connect(t, dst.dsn)
	defer srcConn.Close(t.Context())
	defer dstConn.Close(t.Context())
	if err := srcConn.QueryRow(t.Context(), rows).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if err := dstConn.QueryRow(t.Context(), rows).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != want || want[:4] != "100:" {
		t.Errorf("target rows %s, source rows %s", got, want)
	}
	if n := queryInt(t, dst.dsn, `SELECT count(*) FROM candidates WHERE mood IN ('big', 'small') AND length(name) <> $1`, valueBytes); n != 0 {
		t.Errorf("%d rows with a value of the wrong length", n)
	}

	// One row: its value, its fields and its change record.
	row := int64(valueBytes) + 6*fieldBytes + 200 + changeBytes
	peak, seg := r.s.queueStats.peakBytes.Load(), r.s.queueStats.peakSegment.Load()
	t.Logf("queue peak %d bytes, largest segment %d bytes (batchBytes %d)", peak, seg, o.BatchBytes)
	if seg < o.BatchBytes/2 {
		t.Errorf("largest segment %d bytes: the large transaction was not streamed in chunks near the bound", seg)
	}
	if seg > o.BatchBytes+row {
		t.Errorf("a chunk of %d bytes exceeds batchBytes %d by more than one row", seg, o.BatchBytes)
	}
	if peak > 2*o.BatchBytes+row {
		t.Errorf("the queue held %d bytes, more than twice batchBytes (%d) and one row", peak, o.BatchBytes)
	}
}

// The queue never holds more than its byte bound (a single larger segment
// passes alone), and a run of markers (skipped echo transactions) takes one
// segment that counts toward the bounds, whatever its length.
func TestQueueBoundsBytesAndMarkers(t *testing.T) {
	var st queueStats
	q := newQueue(1000, 10_000)
	q.stats = &st
	sizes := []int{100, 4000, 9000, 8000, 3000, 3000, 3000, 3000, 500, 7000}
	done := make(chan error, 1)
	go func() {
		for i := 0; i < 200; i++ {
			s := q.get()
			s.buf = append(s.buf, make([]byte, sizes[i%len(sizes)])...)
			s.commits = append(s.commits, commit{lsn: pglogrepl.LSN(i + 1)})
			if err := q.push(s); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var taken int
	var segs []*segment
	for taken < 200 {
		var err error
		segs, err = q.take(segs[:0], groupBounds{txns: 1000, rows: 1000, bytes: 5000})
		if err != nil {
			t.Fatal(err)
		}
		var b int64
		for _, s := range segs {
			b += s.bytes()
		}
		if len(segs) > 1 && b > 5000 {
			t.Errorf("a group of %d segments took %d bytes, over its bound 5000", len(segs), b)
		}
		taken += len(segs)
		q.recycle(segs)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if p := st.peakBytes.Load(); p > 10_000 || p < 9000 {
		t.Errorf("queue peak %d bytes, want at most its bound 10000 (and near it: the reader outran the applier)", p)
	}
	// A segment larger than the bound passes alone rather than blocking.
	s := q.get()
	s.buf = make([]byte, 20_000)
	if err := q.push(s); err != nil || q.bytes != s.bytes() {
		t.Fatalf("oversized segment: push %v, queue %d bytes", err, q.bytes)
	}
	q.take(segs[:0], groupBounds{txns: 1, rows: 1, bytes: 1})

	for i := 1; i <= 100_000; i++ {
		s := q.get()
		s.marker = pglogrepl.LSN(i)
		if err := q.push(s); err != nil {
			t.Fatal(err)
		}
	}
	if len(q.segs) != 1 || q.segs[0].marker != 100_000 || q.rows != 1 || q.bytes != segmentBytes {
		t.Errorf("100000 markers: %d segments (first marker %v), %d rows, %d bytes; want 1 segment at 100000, 1 row, %d bytes",
			len(q.segs), q.segs[0].marker, q.rows, q.bytes, segmentBytes)
	}
}
