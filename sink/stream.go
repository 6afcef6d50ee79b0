package sink

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/votr-dev/votr/schema"
)

// sessionParams are set on every connection the sink opens, so that values
// have one text form on both sides: pgoutput renders values with the
// walsender's settings, and merges compare them with the target's.
var sessionParams = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO, MDY",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "3",
	"bytea_output":       "hex",
	"application_name":   "votr-sink",
}

// monitorName is the application_name of the sink's side connections
// (WAL positions of source and target), told apart from the stream and
// the apply session.
const monitorName = "votr-sink-monitor"

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// stream is one replication connection reading a slot. pgconn opens it;
// then the sink takes the socket over (out of Go's network poller when it
// can) and speaks the replication protocol itself: one goroutine reads,
// with plain blocking reads and no per-message deadline or context, and
// another writes standby status updates, which a socket allows
// concurrently.
type stream struct {
	fe        *pgproto3.Frontend
	w         io.Writer // where status updates go
	shut      func()    // makes a blocked read return
	release   func()    // after the reader and writer are done
	closeOnce sync.Once

	raw    *rawSocket        // nil when reading through a net.Conn
	cr     *coalescingReader // nil when reading through pgconn's reader
	behind bool

	wmu  sync.Mutex
	wbuf []byte

	start pglogrepl.LSN
}

// slotError is a replication slot that cannot be streamed: retrying does not help.
type slotError struct{ msg string }

func (e *slotError) Error() string { return e.msg }

// openStream connects to the source, checks the slot and starts streaming
// from start (0 = from the slot's confirmed position).
func openStream(ctx context.Context, dsn, sourceDB string, sourceID int, slot string, start pglogrepl.LSN) (*stream, error) {
	if !slotNameRE.MatchString(slot) {
		return nil, &slotError{fmt.Sprintf("replication slot name %q is not valid: use lower-case letters, digits and _", slot)}
	}
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("source connection string: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	for k, v := range sessionParams {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to source: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close(context.Background())
		}
	}()

	// A replication=database connection accepts simple SQL queries.
	res, err := conn.Exec(ctx, `SELECT COALESCE(wal_status, ''), plugin, database
		FROM pg_replication_slots WHERE slot_name = `+schema.QuoteLiteral(slot)).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("look up replication slot %s: %w", slot, err)
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return nil, &slotError{fmt.Sprintf("replication slot %s does not exist on region %d (database %s); run `votr apply` to create it", slot, sourceID, sourceDB)}
	}
	row := res[0].Rows[0]
	if string(row[0]) == "lost" {
		return nil, &slotError{fmt.Sprintf("replication slot %s on region %d was invalidated (it retained more WAL than max_slot_wal_keep_size allows) and can no longer stream; run `votr apply`, which replaces the slot and backfills what the feed missed", slot, sourceID)}
	}
	if string(row[1]) != "pgoutput" {
		return nil, &slotError{fmt.Sprintf("replication slot %s on region %d uses plugin %s, not pgoutput; drop it and run `votr apply`", slot, sourceID, row[1])}
	}
	if string(row[2]) != sourceDB {
		return nil, &slotError{fmt.Sprintf("replication slot %s on region %d belongs to database %s, not %s", slot, sourceID, row[2], sourceDB)}
	}
	if _, err := pglogrepl.IdentifySystem(ctx, conn); err != nil {
		return nil, fmt.Errorf("identify system: %w", err)
	}
	// Version 2 is what PostgreSQL 14+ offers; without streaming of
	// in-progress transactions it reads like version 1, which older
	// servers need.
	proto := "2"
	if v, err := strconv.Atoi(strings.SplitN(conn.ParameterStatus("server_version"), ".", 2)[0]); err == nil && v < 14 {
		proto = "1"
	}
	args := []string{"proto_version '" + proto + "'", "publication_names " + schema.QuoteLiteral(schema.Publication)}
	if conn.Frontend().ReadBufferLen() != 0 {
		// Unexpected data pending: let pgconn start the stream and keep
		// reading through it.
		err = pglogrepl.StartReplication(ctx, conn, slot, start, pglogrepl.StartReplicationOptions{PluginArgs: args})
		if err != nil {
			return nil, fmt.Errorf("start replication from slot %s at %s: %w", slot, start, err)
		}
		hc, err := conn.Hijack()
		if err != nil {
			return nil, fmt.Errorf("take over replication connection: %w", err)
		}
		ok = true
		return &stream{fe: hc.Frontend, start: start, w: hc.Conn, shut: func() { _ = hc.Conn.Close() }}, nil
	}
	// Take the idle connection over before the stream starts, so that
	// every byte of it is read our way.
	hc, err := conn.Hijack()
	if err != nil {
		return nil, fmt.Errorf("take over replication connection: %w", err)
	}
	ok = true // hc owns the connection from here on
	st := &stream{start: start, w: hc.Conn, shut: func() { _ = hc.Conn.Close() }}
	var r io.Reader = hc.Conn
	if raw := rawSocketOf(hc.Conn); raw != nil {
		// Read the socket with plain blocking reads, outside Go's network
		// poller: the poller would be woken by every message the
		// walsender sends, even while the reader pauses, and each such
		// wake-up costs the walsender (the bottleneck of a catch-up on a
		// small machine) about as much as the send itself.
		r, st.w, st.raw = raw, raw, raw
		st.shut = raw.shutdown
		st.release = raw.close
	}
	// A large buffer, filled after a pause when the last read found little:
	// the walsender sends every message on its own, so reading as they come
	// means a read, and a wake-up, per row.
	st.cr = &coalescingReader{r: r, pause: readPause, threshold: shortRead}
	st.fe = pgproto3.NewFrontend(bufio.NewReaderSize(st.cr, 256<<10), st.w)
	if err := st.startReplication(ctx, fmt.Sprintf("START_REPLICATION SLOT %s LOGICAL %s (%s)", slot, start, strings.Join(args, ", "))); err != nil {
		st.done()
		return nil, fmt.Errorf("start replication from slot %s at %s: %w", slot, start, err)
	}
	return st, nil
}

// startReplication sends START_REPLICATION and waits for the stream.
func (s *stream) startReplication(ctx context.Context, sql string) error {
	stop := context.AfterFunc(ctx, s.close)
	defer stop()
	s.fe.Send(&pgproto3.Query{String: sql})
	if err := s.fe.Flush(); err != nil {
		return err
	}
	for {
		msg, err := s.fe.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return nil
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return fmt.Errorf("unexpected %T in reply to START_REPLICATION", msg)
		}
	}
}

// rawSocket is a connected socket used with blocking system calls only.
type rawSocket struct{ fd int }

// rawSocketOf takes a TCP or Unix socket connection out of Go's poller,
// or returns nil (TLS, or the platform refuses).
func rawSocketOf(c net.Conn) *rawSocket {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	fd := -1
	if err := rc.Control(func(f uintptr) {
		if d, err := syscall.Dup(int(f)); err == nil {
			fd = d
		}
	}); err != nil || fd < 0 {
		return nil
	}
	// The duplicate keeps the socket open; closing the original takes it
	// out of the poller.
	_ = c.Close()
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, false); err != nil {
		_ = syscall.Close(fd)
		return nil
	}
	return &rawSocket{fd: fd}
}

func (r *rawSocket) Read(p []byte) (int, error) {
	for {
		n, err := syscall.Read(r.fd, p)
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return 0, err
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

func (r *rawSocket) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := syscall.Write(r.fd, p[done:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// shutdown makes a blocked read return; the descriptor stays valid (so
// its number cannot be reused under a late read or write) until close.
func (r *rawSocket) shutdown() { _ = syscall.Shutdown(r.fd, syscall.SHUT_RDWR) }

func (r *rawSocket) close() { _ = syscall.Close(r.fd) }

// readPause is how long the reader lets data gather after a short read. It
// adds at most this much latency to a change. A read of shortRead bytes or
// more means the buffer filled: read on at once.
const (
	readPause = 2 * time.Millisecond
	shortRead = 64 << 10
)

// coalescingReader pauses before reading again when the previous read
// found little data.
type coalescingReader struct {
	r         io.Reader
	pause     time.Duration
	threshold int // a read of fewer bytes is short
	short     bool
}

func (r *coalescingReader) Read(p []byte) (int, error) {
	if r.short {
		time.Sleep(r.pause)
	}
	n, err := r.r.Read(p)
	r.short = n < r.threshold
	return n, err
}

// Catching up, the reader treats reads of less than behindShort bytes as
// short (and pauses after them), so a backlog is read in larger pieces.
// An earlier version also shrank the socket's receive buffer while behind;
// it halved the walsender's CPU but could stall a feed for good (a
// multi-process test saw feeds connected with nothing applied), so it is gone.
const (
	behindEnter = 8 << 20 // bytes behind the source's WAL end
	behindLeave = 1 << 20
	behindShort = 8 << 10
)

// setBehind switches the reader between catch-up and normal reading; it
// runs on the reader's goroutine.
func (s *stream) setBehind(behind bool) {
	if s.raw == nil || s.cr == nil || s.behind == behind {
		return
	}
	s.behind = behind
	s.cr.threshold = shortRead
	if behind {
		s.cr.threshold = behindShort
	}
}

// close ends the stream; a blocked read returns.
func (s *stream) close() { s.closeOnce.Do(s.shut) }

// done frees the connection once nothing reads or writes it any more.
func (s *stream) done() {
	s.close()
	if s.release != nil {
		s.release()
	}
}

// pgEpoch is PostgreSQL's time origin, 2000-01-01 UTC.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func pgTime(us int64) time.Time { return pgEpoch.Add(time.Duration(us) * time.Microsecond) }

// sendStatus reports lsn as written, flushed and applied.
func (s *stream) sendStatus(lsn pglogrepl.LSN, replyRequested bool) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	b := s.wbuf[:0]
	b = append(b, 'd', 0, 0, 0, 0, 'r')
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

// readerHooks connect the reader to the rest of the session.
type readerHooks struct {
	// skipUpTo: source transactions committed at or before it are applied already.
	skipUpTo pglogrepl.LSN
	// echoOrigin: transactions with this replication origin are echoes.
	echoOrigin string
	// chunkRows: a transaction larger than this is handed over in chunks.
	chunkRows int
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
		msg, err := s.fe.Receive()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return errQueueClosed
			}
			return fmt.Errorf("receive from source: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := d.copyData(m.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		case *pgproto3.CopyDone:
			return fmt.Errorf("source ended the replication stream: %w", io.ErrUnexpectedEOF)
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return fmt.Errorf("unexpected message %T in replication stream", msg)
		}
	}
}

func (d *decoder) copyData(b []byte) error {
	if len(b) == 0 {
		return errors.New("empty replication message")
	}
	switch b[0] {
	case 'w':
		if len(b) < 25 {
			return errors.New("short XLogData message")
		}
		// A logical walsender puts the record's own position in both
		// header fields; how far the source is ahead comes from
		// h.sourceEnd, which the session polls.
		if d.h.onBehind != nil && d.h.sourceEnd != nil {
			at := pglogrepl.LSN(binary.BigEndian.Uint64(b[1:]))
			switch end := d.h.sourceEnd(); {
			case end > at+behindEnter:
				d.h.onBehind(true)
			case end < at+behindLeave:
				d.h.onBehind(false)
			}
		}
		return d.message(b[25:])
	case 'k':
		if len(b) < 18 {
			return errors.New("short keepalive message")
		}
		walEnd := pglogrepl.LSN(binary.BigEndian.Uint64(b[1:]))
		if d.h.onWALEnd != nil {
			d.h.onWALEnd(walEnd)
		}
		if d.h.onBehind != nil {
			d.h.onBehind(false) // the source has nothing more to send
		}
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
	switch b[0] {
	case 'B':
		final := pglogrepl.LSN(r.u64())
		ts := int64(r.u64())
		r.u32() // xid
		d.inTxn = true
		d.meta = txnMeta{lsn: final, commitTime: ts}
		d.skip = final <= d.h.skipUpTo
		if !d.skip {
			d.startSegment()
		}
	case 'O':
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
	case 'C':
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
	case 'R':
		rel := &relation{id: r.u32()}
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
				r.u32() // typmod
			}
		}
		if r.err == nil {
			d.rels[rel.id] = rel
		}
	case 'I', 'U', 'D':
		err = d.change(b[0], r)
	case 'T':
		err = d.truncate(r)
	case 'Y', 'M':
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
	if len(d.cur.changes) >= d.h.chunkRows {
		if err := d.flushChunk(); err != nil {
			return err
		}
	}
	s := d.cur
	c := change{rel: rel, op: op, old: -1, new: -1, meta: int32(len(s.metas) - 1)}
	switch op {
	case 'I':
		if r.u8() != 'N' {
			return errors.New("insert without a new tuple")
		}
		c.new = d.tuple(r, rel)
	case 'U':
		k := r.u8()
		if k == 'K' || k == 'O' {
			c.old = d.tuple(r, rel)
			k = r.u8()
		}
		if k != 'N' {
			return errors.New("update without a new tuple")
		}
		c.new = d.tuple(r, rel)
		if c.old >= 0 && r.err == nil {
			// An unchanged TOASTed value equals the old row's (which,
			// with REPLICA IDENTITY FULL, carries it).
			n := int32(len(rel.cols))
			for i := int32(0); i < n; i++ {
				if s.fields[c.new+i].kind == 'u' && s.fields[c.old+i].kind != 'u' {
					s.fields[c.new+i] = s.fields[c.old+i]
				}
			}
		}
	case 'D':
		k := r.u8()
		if k != 'K' && k != 'O' {
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
	start := int32(len(s.fields))
	for i := 0; i < n; i++ {
		kind := r.u8()
		switch kind {
		case 'n', 'u':
			s.fields = append(s.fields, field{kind: kind})
		case 't', 'b':
			l := int(r.u32())
			if !r.need(l) {
				return -1
			}
			off := len(s.buf)
			s.buf = append(s.buf, r.b[:l]...)
			r.b = r.b[l:]
			s.fields = append(s.fields, field{off: int32(off), n: int32(l), kind: 't'})
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
