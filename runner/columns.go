package runner

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// columns are the columns votr's workload tables must have, with their
// types as format_type prints them: the workers, sinks and merges read and
// write exactly these.
var columns = map[string][][2]string{
	"candidates": {{"candidate", "uuid"}, {"name", "text"}, {"mood", "text"}, {"version", "integer"}, {"whence", "jsonb"}, {"src", "integer"}},
	"ballots":    {{"candidate", "uuid"}, {"ballot", "uuid"}, {"whence", "jsonb"}, {"src", "integer"}},
	"totals":     {{"candidate", "uuid"}, {"total", "bigint"}, {"whence", "jsonb"}, {"src", "integer"}},
}

// columnDrift compares the workload tables present in a region's database
// with the columns votr made, and describes each difference with the SQL
// that repairs it ("" when there is none). Missing tables are not its
// business: plan re-creates them.
func columnDrift(ctx context.Context, conn *pgx.Conn, region string) (string, error) {
	rows, err := conn.Query(ctx, `
		SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod)
		FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relname = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped`,
		[]string{"candidates", "ballots", "totals"})
	if err != nil {
		return "", err
	}
	have := map[string]map[string]string{}
	var tbl, col, typ string
	if _, err := pgx.ForEachRow(rows, []any{&tbl, &col, &typ}, func() error {
		if have[tbl] == nil {
			have[tbl] = map[string]string{}
		}
		have[tbl][col] = typ
		return nil
	}); err != nil {
		return "", err
	}
	var diffs, fixes []string
	for _, t := range []string{"candidates", "ballots", "totals"} {
		cols, ok := have[t]
		if !ok {
			continue
		}
		for _, want := range columns[t] {
			got, ok := cols[want[0]]
			switch {
			case !ok:
				diffs = append(diffs, fmt.Sprintf("column public.%s.%s is missing (votr's is %s)", t, want[0], want[1]))
				fixes = append(fixes, fmt.Sprintf("DROP TABLE public.%s CASCADE; (apply then re-creates it and copies region %s's rows back from the other regions)", t, region))
			case got != want[1]:
				diffs = append(diffs, fmt.Sprintf("column public.%s.%s is %s, votr's is %s", t, want[0], got, want[1]))
				fixes = append(fixes, fmt.Sprintf("ALTER TABLE public.%s ALTER COLUMN %s TYPE %s USING %s::%s;", t, want[0], want[1], want[0], want[1]))
			}
		}
	}
	if len(diffs) == 0 {
		return "", nil
	}
	fixes = slices.Compact(fixes)
	return fmt.Sprintf("the workload tables differ from votr's: %s; votr's workers, sinks and merges cannot use them. Repair them in that database (%s), then run plan again",
		strings.Join(diffs, "; "), strings.Join(fixes, " ")), nil
}
