package sink

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/schema"
)

// Snapshot is a source snapshot exported by creating a feed's slot
// (CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT). It stays usable while the
// replication connection that created the slot stays open and idle.
type Snapshot struct {
	Name string
	// ConsistentPoint is where the slot's stream begins: the snapshot shows
	// exactly the transactions that committed before it.
	ConsistentPoint pglogrepl.LSN
}

// BackfillProgress is reported after every chunk a backfill applies.
type BackfillProgress struct {
	Table string // the table being copied
	// Rows copied so far (all tables); Estimate is how many there are in
	// all, from the planner's statistics (counted when there are none).
	Rows, Estimate int64
	Elapsed        time.Duration
}

// BackfillResult is what a backfill did.
type BackfillResult struct {
	Rows, Conflicts, Dropped, DeadLettered int64
	// Tables are the rows copied per table ("public.ballots").
	Tables map[string]int64
	// Checkpoint is the feed's checkpoint the backfill committed.
	Checkpoint pglogrepl.LSN
	Elapsed    time.Duration
	// Attempts is how often the copy ran (more than 1 after a deadlock or a
	// merge that failed and was retried).
	Attempts int
}

// BackfillCheckpoint is the checkpoint a backfilled feed starts from: just
// before the slot's consistent point. The sink skips source transactions
// that committed at or before its checkpoint, and one committing exactly at
// the consistent point is not in the snapshot: it comes in the stream.
func BackfillCheckpoint(consistent pglogrepl.LSN) pglogrepl.LSN { return consistent - 1 }

// Backfill gives the feed's target the rows of its source's published
// tables as snap shows them, then records the feed's checkpoint at the
// snapshot's consistent point, all in one target transaction: the copy
// holds what committed before that point, the slot streams what committed
// after, with no gap and no overlap. Rows go through the sink's own apply
// path in chunks of Options.BatchRows, as replicated inserts: a row the
// target already has identically is left alone, a conflicting one is merged
// by the script (or dead-lettered per onScriptError), and the target is
// tagged with the feed's replication origin so that the reverse feed skips
// the copy. Rows are read while earlier chunks are applied.
//
// A row whose merge fails (or that the target refuses) is retried alone
// and then parked or stops the copy, as a sink does (retry.go); the target
// transaction is retried from the start (same snapshot) only after a
// deadlock, a serialization failure or a lock held past lock_timeout, up
// to a bound and with a growing pause; other errors are returned and leave
// the target unchanged.
func Backfill(ctx context.Context, cfg Config, snap Snapshot, progress func(BackfillProgress)) (BackfillResult, error) {
	if snap.Name == "" || snap.ConsistentPoint == 0 {
		return BackfillResult{}, errors.New("backfill: no exported snapshot given")
	}
	if cfg.Discard {
		return BackfillResult{}, errors.New("backfill: a discarding sink applies nothing")
	}
	s, err := New(cfg)
	if err != nil {
		return BackfillResult{}, err
	}
	s.copying = true // its commit creates the feed's checkpoint row
	// A backfill meets the target's rows (the seed at least): inserts look
	// for conflicts from the start rather than failing on the first one.
	s.guardedGroups.Store(math.MaxInt64 / 2)
	start := time.Now()
	for attempt := 1; ; attempt++ {
		res, err := s.backfillOnce(ctx, snap, progress, start)
		res.Attempts = attempt
		if err == nil {
			res.Elapsed = time.Since(start)
			s.log.Info("backfill committed", "rows", res.Rows, "conflicts", res.Conflicts, "checkpoint", res.Checkpoint,
				"elapsed", res.Elapsed.Round(time.Millisecond), "rows/s", fmt.Sprintf("%.0f", float64(res.Rows)/max(res.Elapsed.Seconds(), 0.001)))
			return res, nil
		}
		if ctx.Err() != nil || attempt >= 10 {
			return res, fmt.Errorf("feed %s: backfill: %w", s.feed, err)
		}
		switch {
		case isLockError(err):
			// A deadlock, a serialization failure, or a row lock held
			// past the session's lock_timeout (a busy target's own
			// writers): the copy is one transaction, rolled back whole.
			// A pause first: a client holding the rows for seconds would
			// otherwise use up the attempts, each a whole copy.
			pause := min(time.Duration(attempt)*time.Second, 5*time.Second)
			s.log.Warn("backfill aborted by the target; copying again from the same snapshot", "attempt", attempt, "in", pause, "err", err)
			select {
			case <-ctx.Done():
				return res, fmt.Errorf("feed %s: backfill: %w", s.feed, err)
			case <-time.After(pause):
			}
		default:
			return res, fmt.Errorf("feed %s: backfill: %w", s.feed, err)
		}
	}
}

// backfillOnce runs the copy in one target transaction.
func (s *Sink) backfillOnce(ctx context.Context, snap Snapshot, progress func(BackfillProgress), start time.Time) (BackfillResult, error) {
	res := BackfillResult{Tables: map[string]int64{}}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	src, err := s.sourceSnapshot(ctx, snap)
	if err != nil {
		return res, err
	}
	defer src.Close(context.Background())
	rels, estimate, err := publishedRelations(ctx, src)
	if err != nil {
		return res, err
	}

	conn, err := s.connect(ctx, true)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.Background())
	origin, err := s.setupApply(ctx, conn)
	if err != nil {
		return res, err
	}
	a := newApplier(s, conn, origin)

	// A reader fills chunks while the applier writes the previous ones.
	meta := txnMeta{lsn: BackfillCheckpoint(snap.ConsistentPoint), commitTime: time.Since(pgEpoch).Microseconds()}
	chunks := make(chan *segment, 2)
	readErr := make(chan error, 1)
	go func() {
		defer close(chunks)
		readErr <- s.readSnapshot(ctx, src, rels, meta, chunks)
	}()
	var rows int64
	table := ""
	for seg := range chunks {
		if len(seg.changes) > 0 {
			table = seg.changes[0].rel.namespace + "." + seg.changes[0].rel.name
		}
		if _, err := a.applyGroup(ctx, []*segment{seg}); err != nil {
			cancel()
			for range chunks {
			}
			<-readErr
			return res, err
		}
		for _, c := range seg.changes {
			res.Tables[c.rel.namespace+"."+c.rel.name]++
		}
		rows += int64(len(seg.changes))
		if progress != nil {
			progress(BackfillProgress{Table: table, Rows: rows, Estimate: max(estimate, rows), Elapsed: time.Since(start)})
		}
	}
	if err := <-readErr; err != nil {
		if a.inTxn {
			a.rollback(context.WithoutCancel(ctx))
		}
		return res, err
	}
	// The whole copy is one source "transaction" committed at the
	// checkpoint: applying it commits the target transaction with it.
	last := &segment{metas: []txnMeta{meta}, commits: []commit{{lsn: meta.lsn, end: snap.ConsistentPoint, commitTime: meta.commitTime}}}
	r, err := a.applyGroup(ctx, []*segment{last})
	if err != nil {
		return res, err
	}
	if !r.committed {
		return res, errors.New("internal error: the backfill's target transaction did not commit")
	}
	res.Rows, res.Conflicts, res.Dropped, res.DeadLettered = rows, r.st.conflicts, r.st.dropped, r.st.deadLettered
	res.Checkpoint = meta.lsn
	return res, nil
}

// sourceSnapshot opens a source connection inside a transaction that sees
// exactly the exported snapshot, with the session settings the stream's
// walsender uses, so that values have the same text as in the stream.
func (s *Sink) sourceSnapshot(ctx context.Context, snap Snapshot) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(s.cfg.SourceDSN)
	if err != nil {
		return nil, fmt.Errorf("source connection string: %w", err)
	}
	for k, v := range sessionParams {
		cfg.RuntimeParams[k] = v
	}
	cfg.RuntimeParams["application_name"] = "votr-backfill"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to source: %w", err)
	}
	_, err = conn.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT `+schema.QuoteLiteral(snap.Name)).ReadAll()
	if err != nil {
		conn.Close(context.Background())
		if isCode(err, "22023") {
			return nil, &slotError{fmt.Sprintf("source snapshot %s is gone (its replication connection closed): create the feed's slot again", snap.Name)}
		}
		return nil, fmt.Errorf("source snapshot %s: %w", snap.Name, err)
	}
	return conn, nil
}

// publishedRelations describes the tables of the source's publication as
// pgoutput would (parents first), and estimates their rows.
func publishedRelations(ctx context.Context, conn *pgconn.PgConn) ([]*relation, int64, error) {
	res := conn.ExecParams(ctx, `
		SELECT c.oid::text, p.schemaname::text, p.tablename::text, c.relreplident::text,
		       c.reltuples::bigint::text
		FROM pg_publication_tables p
		JOIN pg_namespace n ON n.nspname = p.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
		WHERE p.pubname = $1`, [][]byte{[]byte(schema.Publication)}, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, 0, fmt.Errorf("read the source's publication %s: %w", schema.Publication, res.Err)
	}
	if len(res.Rows) == 0 {
		return nil, 0, &schemaError{fmt.Sprintf("the source's publication %s has no tables (or does not exist); run `votr apply`", schema.Publication)}
	}
	var rels []*relation
	var estimate int64
	for _, row := range res.Rows {
		oid, err := strconv.ParseUint(string(row[0]), 10, 32)
		if err != nil {
			return nil, 0, fmt.Errorf("read the source's publication: table oid %q", row[0])
		}
		rel := &relation{id: uint32(oid), namespace: string(row[1]), name: string(row[2]), identity: row[3][0]}
		cols := conn.ExecParams(ctx, `
			SELECT a.attname::text, a.atttypid::text FROM pg_attribute a
			WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
			ORDER BY a.attnum`, [][]byte{row[0]}, nil, nil, nil).Read()
		if cols.Err != nil {
			return nil, 0, fmt.Errorf("read the columns of %s.%s: %w", rel.namespace, rel.name, cols.Err)
		}
		for _, c := range cols.Rows {
			typ, err := strconv.ParseUint(string(c[1]), 10, 32)
			if err != nil {
				return nil, 0, fmt.Errorf("read the columns of %s.%s: type oid %q", rel.namespace, rel.name, c[1])
			}
			rel.cols = append(rel.cols, relColumn{name: string(c[0]), typ: uint32(typ)})
		}
		n, _ := strconv.ParseInt(string(row[4]), 10, 64)
		if n < 0 {
			// Never analyzed: count, in the snapshot.
			cnt := conn.ExecParams(ctx, `SELECT count(*)::text FROM `+pgx.Identifier{rel.namespace, rel.name}.Sanitize(), nil, nil, nil, nil).Read()
			if cnt.Err != nil {
				return nil, 0, fmt.Errorf("count the rows of %s.%s: %w", rel.namespace, rel.name, cnt.Err)
			}
			n, _ = strconv.ParseInt(string(cnt.Rows[0][0]), 10, 64)
		}
		estimate += n
		rels = append(rels, rel)
	}
	rank := func(r *relation) int {
		if r.namespace == "public" {
			if i := slices.Index(schema.Tables, r.name); i >= 0 {
				return i
			}
		}
		return len(schema.Tables)
	}
	slices.SortFunc(rels, func(x, y *relation) int {
		if d := rank(x) - rank(y); d != 0 {
			return d
		}
		return strings.Compare(x.namespace+"."+x.name, y.namespace+"."+y.name)
	})
	return rels, estimate, nil
}

// readSnapshot reads every relation's rows in text form and hands them on
// as insert changes, in chunks of BatchRows rows or BatchBytes bytes (each
// chunk holds one table's rows, so a chunk never mixes parents and
// children).
func (s *Sink) readSnapshot(ctx context.Context, conn *pgconn.PgConn, rels []*relation, meta txnMeta, out chan<- *segment) error {
	chunk := s.opts.BatchRows
	newSeg := func() *segment {
		return &segment{metas: []txnMeta{meta}, partial: true}
	}
	for _, rel := range rels {
		cols := make([]string, len(rel.cols))
		for i, c := range rel.cols {
			cols[i] = pgx.Identifier{c.name}.Sanitize()
		}
		sql := "SELECT " + strings.Join(cols, ", ") + " FROM " + pgx.Identifier{rel.namespace, rel.name}.Sanitize()
		rr := conn.ExecParams(ctx, sql, nil, nil, nil, nil)
		seg := newSeg()
		for rr.NextRow() {
			vals := rr.Values()
			first := int32(len(seg.fields))
			for _, v := range vals {
				if v == nil {
					seg.fields = append(seg.fields, field{kind: fieldNull})
					continue
				}
				off := len(seg.buf)
				if off+len(v) > maxSegmentBytes {
					rr.Close()
					return fmt.Errorf("read %s.%s from the source snapshot: %w", rel.namespace, rel.name, errSegmentFull)
				}
				seg.buf = append(seg.buf, v...)
				seg.fields = append(seg.fields, field{off: int32(off), n: int32(len(v)), kind: fieldText})
			}
			seg.changes = append(seg.changes, change{rel: rel, op: opInsert, old: -1, new: first, meta: 0})
			if len(seg.changes) >= chunk || seg.bytes() >= s.opts.BatchBytes {
				select {
				case out <- seg:
				case <-ctx.Done():
					rr.Close()
					return ctx.Err()
				}
				seg = newSeg()
			}
		}
		if _, err := rr.Close(); err != nil {
			return fmt.Errorf("read %s.%s from the source snapshot: %w", rel.namespace, rel.name, err)
		}
		if len(seg.changes) > 0 {
			select {
			case out <- seg:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}
