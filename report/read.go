package report

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/sink"
	"github.com/votr-dev/votr/workload"
)

// digestSQL returns a query giving (count, digest) over a table's rows as
// rendered by rowExpr. The digest is an order-independent multiset hash:
// two sums, over all rows, of 60-bit slices of md5(row), folded with the
// count into one md5. Unlike hashing an ordered string_agg it needs no
// sort and no memory proportional to the table, so it stays cheap on large
// regions; the same rows give the same digest whatever their order.
func digestSQL(table, rowExpr string) string {
	return `SELECT count(*),
	md5(count(*)::text
		|| ':' || COALESCE(sum(('x' || substr(h, 1, 15))::bit(60)::bigint), 0)::text
		|| ':' || COALESCE(sum(('x' || substr(h, 16, 15))::bit(60)::bigint), 0)::text)
FROM (SELECT md5(` + rowExpr + `) AS h FROM ` + table + `) AS rows`
}

var (
	// The row constructor's text form quotes fields when needed, so two
	// different rows never render the same.
	ballotsDigestSQL    = digestSQL("public.ballots", `row(candidate, ballot)::text`)
	totalsDigestSQL     = digestSQL("public.totals", `row(candidate, total)::text`)
	candidatesDigestSQL = digestSQL("public.candidates", `row(candidate, name, mood, version)::text`)
)

func readRegion(ctx context.Context, t RegionTarget) RegionReport {
	rr := RegionReport{ID: t.ID, Label: t.Label}
	if rr.Label == "" {
		rr.Label = fmt.Sprint(t.ID)
	}
	if err := fillRegion(ctx, t, &rr); err != nil {
		id, label := rr.ID, rr.Label
		rr = RegionReport{ID: id, Label: label, Err: redact(err.Error(), t.DSN)}
	}
	return rr
}

// fillRegion reads everything of one region in one REPEATABLE READ,
// read-only snapshot, so the counts, digests and invariant agree.
func fillRegion(ctx context.Context, t RegionTarget, rr *RegionReport) error {
	conn, err := connect(ctx, t.DSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin snapshot: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	var id int
	if err := tx.QueryRow(ctx, `SELECT id FROM votr.region`).Scan(&id); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return errors.New("votr.region is empty: this database was not set up by votr apply")
		}
		return fmt.Errorf("read votr.region (is this a votr region? run apply first): %w", err)
	}
	if id != t.ID {
		return fmt.Errorf("this database is region %d's, not region %d's: check the topology's connect/database settings", id, t.ID)
	}
	if err := tx.QueryRow(ctx, ballotsDigestSQL).Scan(&rr.Ballots, &rr.BallotsDigest); err != nil {
		return fmt.Errorf("digest ballots: %w", err)
	}
	var rows int64
	if err := tx.QueryRow(ctx, totalsDigestSQL).Scan(&rows, &rr.TotalsDigest); err != nil {
		return fmt.Errorf("digest totals: %w", err)
	}
	if err := tx.QueryRow(ctx, `SELECT COALESCE(sum(total), 0)::bigint FROM public.totals`).Scan(&rr.TotalsSum); err != nil {
		return fmt.Errorf("sum totals: %w", err)
	}
	if err := tx.QueryRow(ctx, candidatesDigestSQL).Scan(&rr.Candidates, &rr.CandidatesDigest); err != nil {
		return fmt.Errorf("digest candidates: %w", err)
	}
	srcRows, err := tx.Query(ctx, `SELECT src, count(*) FROM public.ballots GROUP BY src`)
	if err != nil {
		return fmt.Errorf("count ballots per src: %w", err)
	}
	rr.BySrc = map[int]int64{}
	var src int
	var n int64
	if _, err := pgx.ForEachRow(srcRows, []any{&src, &n}, func() error { rr.BySrc[src] = n; return nil }); err != nil {
		return fmt.Errorf("count ballots per src: %w", err)
	}
	if rr.Violations, err = workload.Validate(ctx, tx); err != nil {
		return err
	}
	if rr.Violations == nil {
		rr.Violations = []workload.Violation{}
	}
	return nil
}

func readFeed(ctx context.Context, t FeedTarget) FeedReport {
	fr := FeedReport{Name: t.Name, SourceID: t.SourceID, TargetID: t.TargetID, Slot: t.Slot, RetainedBytes: -1, LagBytes: -1, UnappliedTxns: -1}
	if err := readFeedTarget(ctx, t, &fr); err != nil {
		fr.TargetErr = redact(err.Error(), t.TargetDSN)
	}
	if err := readFeedSource(ctx, t, &fr); err != nil {
		fr.SourceErr = redact(err.Error(), t.SourceDSN)
	}
	return fr
}

func readFeedTarget(ctx context.Context, t FeedTarget, fr *FeedReport) error {
	conn, err := connect(ctx, t.TargetDSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	cp, ok, err := sink.CheckpointsIn(conn).Get(ctx, t.Name)
	switch {
	case err != nil:
		return err
	case ok:
		fr.Checkpoint = &Checkpoint{SourceLSN: cp.SourceLSN, SourceCommit: cp.SourceCommit, AppliedAt: cp.AppliedAt,
			Txns: cp.Txns, Rows: cp.Rows, Conflicts: cp.Conflicts, Dropped: cp.Dropped, DeadLettered: cp.DeadLettered}
	default:
		// The feed has not applied a transaction yet.
	}
	if fr.PendingDeadLetters, err = sink.DeadLettersIn(conn).Pending(ctx, t.Name); err != nil {
		return err
	}
	return nil
}

func readFeedSource(ctx context.Context, t FeedTarget, fr *FeedReport) error {
	conn, err := connect(ctx, t.SourceDSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if t.SharedSlot != "" {
		// Its own slot while it has one (before it is handed over).
		var own bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, t.Slot).Scan(&own); err != nil {
			return fmt.Errorf("read slot %s: %w", t.Slot, err)
		}
		if !own {
			t.Slot, fr.Slot, fr.Shared = t.SharedSlot, t.SharedSlot, true
		}
	}
	err = conn.QueryRow(ctx, `SELECT active, COALESCE(wal_status, ''),
			COALESCE((pg_current_wal_lsn() - restart_lsn)::bigint, -1),
			COALESCE((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, -1)
		FROM pg_replication_slots WHERE slot_name = $1`, t.Slot).
		Scan(&fr.SlotActive, &fr.WALStatus, &fr.RetainedBytes, &fr.LagBytes)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		fr.SlotExists = false
	case err != nil:
		return fmt.Errorf("read slot %s: %w", t.Slot, err)
	default:
		fr.SlotExists = true
	}
	if fr.SlotExists && fr.WALStatus != "lost" && fr.TargetErr == "" {
		fr.UnappliedTxns, fr.UnappliedCapped = unapplied(ctx, conn, t, fr)
	}
	return nil
}
