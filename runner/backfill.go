package runner

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
)

// backfillTables are copied in this order (rows that others reference
// first), with the columns the merges need.
var backfillTables = []struct {
	name    string
	columns []string
	merge   []string // statements merging bf_<name> into public.<name>
}{
	{
		name:    "candidates",
		columns: []string{"candidate", "name", "mood", "version", "whence", "src"},
		// Last one wins on (version, src); the winner carries both clocks.
		merge: []string{`INSERT INTO public.candidates AS t (candidate, name, mood, version, whence, src)
			SELECT candidate, name, mood, version, whence, src FROM bf_candidates
			ON CONFLICT (candidate) DO UPDATE SET
				name = excluded.name, mood = excluded.mood, version = excluded.version, src = excluded.src,
				whence = (SELECT coalesce(jsonb_object_agg(k, greatest(coalesce((t.whence ->> k)::bigint, 0),
				                                                     coalesce((excluded.whence ->> k)::bigint, 0))), '{}'::jsonb)
				          FROM (SELECT jsonb_object_keys(t.whence) UNION SELECT jsonb_object_keys(excluded.whence)) AS keys(k))
			WHERE (excluded.version, excluded.src) > (t.version, t.src)`},
	},
	{
		name:    "ballots",
		columns: []string{"candidate", "ballot", "whence", "src"},
		merge: []string{`INSERT INTO public.ballots (candidate, ballot, whence, src)
			SELECT candidate, ballot, whence, src FROM bf_ballots ON CONFLICT DO NOTHING`},
	},
	{
		name:    "totals",
		columns: []string{"candidate", "total", "whence", "src"},
		// The convergent counter: per region the entry with the larger c,
		// total = the sum of the entries' contributions.
		merge: []string{`WITH m AS (
				SELECT b.candidate, b.src,
				       (SELECT coalesce(jsonb_object_agg(k, CASE
				                   WHEN coalesce((b.whence -> k ->> 'c')::bigint, -1) > coalesce((t.whence -> k ->> 'c')::bigint, -1)
				                   THEN b.whence -> k ELSE t.whence -> k END), '{}'::jsonb)
				        FROM (SELECT jsonb_object_keys(t.whence) UNION SELECT jsonb_object_keys(b.whence)) AS keys(k)) AS whence
				FROM bf_totals b JOIN public.totals t USING (candidate))
			UPDATE public.totals t SET whence = m.whence, src = m.src,
				total = (SELECT coalesce(sum((e.v ->> 'n')::bigint), 0) FROM jsonb_each(m.whence) AS e(k, v))
			FROM m WHERE t.candidate = m.candidate AND t.whence IS DISTINCT FROM m.whence`,
			`INSERT INTO public.totals (candidate, total, whence, src)
			SELECT candidate, total, whence, src FROM bf_totals ON CONFLICT DO NOTHING`},
	},
}

// exportedSlot is a feed's slot just created on a replication connection
// with an exported snapshot: the snapshot shows exactly what the source
// committed before the slot's consistent point, from which the slot
// streams. It stays usable while conn stays open and idle.
type exportedSlot struct {
	conn       *pgconn.PgConn
	snapshot   string
	consistent pglogrepl.LSN
}

func (e *exportedSlot) close(ctx context.Context) {
	if e != nil && e.conn != nil {
		e.conn.Close(context.WithoutCancel(ctx))
		e.conn = nil
	}
}

// slotNameOK: names reach a replication command unquoted.
var slotNameOK = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// createSlotExport creates a feed's slot in the source database on a
// replication connection, exporting its snapshot, and keeps the connection.
func createSlotExport(ctx context.Context, srv *server, db, name string) (*exportedSlot, error) {
	if !slotNameOK.MatchString(name) {
		return nil, fmt.Errorf("replication slot name %q: want lower-case letters, digits and _", name)
	}
	dsn, err := srv.dsn(db)
	if err != nil {
		return nil, err
	}
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", config.Redact(dsn), scrubErr(err, dsn))
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "votr apply"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s for replication: %w", config.Redact(dsn), scrubErr(err, dsn))
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, name, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		if pgCode(err) == "42710" {
			return nil, fmt.Errorf("replication slot %s appeared while apply ran (another votr?); run apply again", name)
		}
		return nil, fmt.Errorf("create replication slot %s with an exported snapshot: %w", name, err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil || res.SnapshotName == "" {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("create replication slot %s: no snapshot or consistent point returned (%q, %q)", name, res.SnapshotName, res.ConsistentPoint)
	}
	return &exportedSlot{conn: conn, snapshot: res.SnapshotName, consistent: lsn}, nil
}

// startCheckpoint is the checkpoint a backfilled feed starts from: just
// before the slot's consistent point. A sink skips source transactions
// whose commit is at or before its checkpoint, and one committing exactly
// at the consistent point is not in the snapshot: it comes in the stream.
func startCheckpoint(consistent pglogrepl.LSN) pglogrepl.LSN { return consistent - 1 }

// backfill gives feed f's target a copy of its source as of the snapshot
// exp exported, merged in one target transaction that also records the
// feed's checkpoint at the slot's consistent point: the copy holds what
// committed before that point, the slot streams what committed after.
func (r *Runner) backfill(ctx context.Context, in *inspection, f config.Feed, exp *exportedSlot) error {
	src, tgt := in.servers[f.Source.ServerKey()], in.servers[f.Target.ServerKey()]
	srcDSN, err := src.dsn(f.Source.Database)
	if err != nil {
		return err
	}
	tgtDSN, err := tgt.dsn(f.Target.Database)
	if err != nil {
		return err
	}
	sc, err := connect(ctx, srcDSN)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer sc.Close(context.WithoutCancel(ctx))
	tc, err := connect(ctx, tgtDSN)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer tc.Close(context.WithoutCancel(ctx))

	// Tag the copy with the origin the feed's own sink uses, so that the
	// reverse feed skips it as an echo instead of streaming the whole copy
	// back (the merges would make it a no-op, but it costs time). Without
	// the privilege for origins, the merges alone handle the echo.
	origin := schema.Origin(f.Target.Database, f.Source.ID)
	if _, err := tc.Exec(ctx, `SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL`, origin); err == nil {
		if _, err := tc.Exec(ctx, `SELECT pg_replication_origin_session_setup($1)`, origin); err != nil {
			r.log.Debug("backfill not tagged with a replication origin", "origin", origin, "err", err)
		}
	} else {
		r.log.Debug("backfill not tagged with a replication origin", "origin", origin, "err", err)
	}

	stx, err := sc.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("source snapshot: %w", err)
	}
	defer stx.Rollback(context.WithoutCancel(ctx))
	if _, err := stx.Exec(ctx, `SET TRANSACTION SNAPSHOT `+schema.QuoteLiteral(exp.snapshot)); err != nil {
		return fmt.Errorf("source snapshot %s: %w", exp.snapshot, err)
	}
	// The rows to copy, for the progress: the planner's estimate, or a
	// count in the snapshot for tables never analyzed.
	var estimate int64
	for _, tbl := range backfillTables {
		var n int64
		err := stx.QueryRow(ctx, `SELECT CASE WHEN reltuples >= 0 THEN reltuples::bigint ELSE -1 END FROM pg_class WHERE oid = $1::regclass`, "public."+tbl.name).Scan(&n)
		if err == nil && n < 0 {
			err = stx.QueryRow(ctx, `SELECT count(*) FROM public.`+tbl.name).Scan(&n)
		}
		if err != nil {
			return fmt.Errorf("backfill %s: estimate rows: %w", tbl.name, err)
		}
		estimate += n
	}
	p := &backfillProgress{r: r, feed: f.String(), every: 5 * time.Second}
	defer p.done()
	start := time.Now()
	var total int64
	err = pgx.BeginFunc(ctx, tc, func(ttx pgx.Tx) error {
		if _, err := ttx.Exec(ctx, `SELECT set_config('`+schema.SinkSetting+`', 'on', true)`); err != nil {
			return err
		}
		for _, tbl := range backfillTables {
			tmp := "bf_" + tbl.name
			if _, err := ttx.Exec(ctx, `CREATE TEMP TABLE `+tmp+` (LIKE public.`+tbl.name+`) ON COMMIT DROP`); err != nil {
				return fmt.Errorf("backfill %s: %w", tbl.name, err)
			}
			rows, err := stx.Query(ctx, `SELECT `+joinIdents(tbl.columns)+` FROM public.`+tbl.name)
			if err != nil {
				return fmt.Errorf("backfill %s: read source: %w", tbl.name, err)
			}
			n, err := ttx.CopyFrom(ctx, pgx.Identifier{tmp}, tbl.columns, &rowSource{rows: rows})
			rows.Close()
			if err != nil {
				return fmt.Errorf("backfill %s: copy: %w", tbl.name, err)
			}
			for _, stmt := range tbl.merge {
				if _, err := ttx.Exec(ctx, stmt); err != nil {
					return fmt.Errorf("backfill %s: merge: %w", tbl.name, err)
				}
			}
			total += n
			p.show(f.String(), tbl.name, total, max(estimate, total), time.Since(start))
		}
		_, err := ttx.Exec(ctx, `INSERT INTO votr.checkpoints AS c (feed, source_lsn, applied_at) VALUES ($1, $2::pg_lsn, now())
			ON CONFLICT (feed) DO UPDATE SET source_lsn = excluded.source_lsn, applied_at = now()`,
			f.String(), startCheckpoint(exp.consistent).String())
		return err
	})
	if err != nil {
		return err
	}
	el := time.Since(start)
	r.log.Info("backfilled", "feed", f.String(), "rows", total, "elapsed", el.Round(time.Millisecond),
		"rows/s", fmt.Sprintf("%.0f", float64(total)/max(el.Seconds(), 0.001)), "consistent_point", exp.consistent)
	return nil
}

func joinIdents(cols []string) string {
	s := ""
	for i, c := range cols {
		if i > 0 {
			s += ", "
		}
		s += pgx.Identifier{c}.Sanitize()
	}
	return s
}

// rowSource streams query rows into CopyFrom without holding them all.
type rowSource struct{ rows pgx.Rows }

func (s *rowSource) Next() bool             { return s.rows.Next() }
func (s *rowSource) Values() ([]any, error) { return s.rows.Values() }
func (s *rowSource) Err() error             { return s.rows.Err() }

// backfillProgress shows a backfill's progress: redrawn on the console at
// every step, logged every so often.
type backfillProgress struct {
	r      *Runner
	feed   string
	every  time.Duration
	logged time.Duration
	shown  bool
}

func (p *backfillProgress) show(feed, table string, rows, estimate int64, elapsed time.Duration) {
	rate := float64(rows) / max(elapsed.Seconds(), 0.001)
	left := "?"
	if rate > 0 && estimate >= rows {
		left = time.Duration(float64(estimate-rows) / rate * float64(time.Second)).Round(time.Second).String()
	}
	pct := 100 * float64(rows) / float64(max(estimate, 1))
	if c := p.r.opts.Console; c != nil {
		p.shown = true
		c.Show([]string{
			fmt.Sprintf("── backfill of feed %s: copying %s %s", feed, table, strings.Repeat("─", 20)),
			fmt.Sprintf("%d of ~%d rows (%.0f%%)  %.0f rows/s  about %s left", rows, estimate, pct, rate, left),
		})
	}
	if elapsed-p.logged >= p.every || rows >= estimate {
		p.logged = elapsed
		p.r.log.Info("backfill progress", "feed", feed, "table", table, "rows", rows, "of_about", estimate,
			"rows/s", fmt.Sprintf("%.0f", rate), "left", left)
	}
}

// done clears the progress lines from the console.
func (p *backfillProgress) done() {
	if c := p.r.opts.Console; c != nil && p.shown {
		c.Show(nil)
	}
}
