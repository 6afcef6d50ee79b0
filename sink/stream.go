package sink

import (
	"bufio"
	"context"
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
}

// slotError is a replication slot that cannot be streamed: retrying does not help.
type slotError struct{ msg string }

func (e *slotError) Error() string { return e.msg }

// checkSlotName refuses a name PostgreSQL would not take for a slot (or
// that would need quoting in START_REPLICATION).
func checkSlotName(slot string) error {
	if !slotNameRE.MatchString(slot) {
		return &slotError{fmt.Sprintf("replication slot name %q is not valid: use lower-case letters, digits and _", slot)}
	}
	return nil
}

// openStream connects to the source, checks the slot and starts streaming
// from start (0 = from the slot's confirmed position).
func openStream(ctx context.Context, dsn, name, sourceDB string, sourceID int, slot string, start pglogrepl.LSN) (*stream, error) {
	if err := checkSlotName(slot); err != nil {
		return nil, err
	}
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("source connection string: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	boundConnect(cfg)
	for k, v := range sessionParams {
		cfg.RuntimeParams[k] = v
	}
	if name != "" {
		cfg.RuntimeParams["application_name"] = name
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
		return &stream{fe: hc.Frontend, w: hc.Conn, shut: func() { _ = hc.Conn.Close() }}, nil
	}
	// Take the idle connection over before the stream starts, so that
	// every byte of it is read our way.
	hc, err := conn.Hijack()
	if err != nil {
		return nil, fmt.Errorf("take over replication connection: %w", err)
	}
	ok = true // hc owns the connection from here on
	st := &stream{w: hc.Conn, shut: func() { _ = hc.Conn.Close() }}
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

// next returns the payload of the stream's next replication message, valid
// until the next call.
func (s *stream) next() ([]byte, error) {
	for {
		msg, err := s.fe.Receive()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, errQueueClosed
			}
			return nil, fmt.Errorf("receive from source: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			return m.Data, nil
		case *pgproto3.ErrorResponse:
			return nil, pgconn.ErrorResponseToPgError(m)
		case *pgproto3.CopyDone:
			return nil, fmt.Errorf("source ended the replication stream: %w", io.ErrUnexpectedEOF)
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return nil, fmt.Errorf("unexpected message %T in replication stream", msg)
		}
	}
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
