package runner

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
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

// backfill merges a copy of feed f's source into its target, in one target
// transaction, from one source snapshot taken after the feed's slot exists:
// what the copy misses, the slot streams; what both carry, the merges absorb.
func (r *Runner) backfill(ctx context.Context, in *inspection, f config.Feed) error {
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
	return pgx.BeginFunc(ctx, tc, func(ttx pgx.Tx) error {
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
			r.log.Info("backfilled", "feed", f.String(), "table", tbl.name, "rows", n)
		}
		return nil
	})
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
