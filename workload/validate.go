package workload

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// Querier is what Validate needs: a pool, a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Violation is a candidate whose number of ballots differs from its total.
type Violation struct {
	Candidate string `json:"candidate"`
	Name      string `json:"name"` // "" when the candidate row itself is missing
	Ballots   int64  `json:"ballots"`
	Total     int64  `json:"total"`
	// Snapshot is the snapshot the check read (pg_current_snapshot()).
	Snapshot string `json:"-"`
}

func (v Violation) String() string {
	name := v.Name
	if name == "" {
		name = "no candidate row"
	}
	return fmt.Sprintf("%s (%s): %d ballots but total %d", v.Candidate, name, v.Ballots, v.Total)
}

// validateSQL compares, per candidate, its ballots with its total. It is one
// statement, so it reads one snapshot even under READ COMMITTED. The full
// outer join also catches ballots of a candidate without a totals row, and a
// non-zero total without ballots.
const validateSQL = `
WITH counted AS (
	SELECT candidate, count(*) AS ballots FROM public.ballots GROUP BY candidate
)
SELECT COALESCE(b.candidate, t.candidate)::text,
       COALESCE(c.name, ''),
       COALESCE(b.ballots, 0),
       COALESCE(t.total, 0),
       pg_current_snapshot()::text
FROM counted b
FULL OUTER JOIN public.totals t ON t.candidate = b.candidate
LEFT JOIN public.candidates c ON c.candidate = COALESCE(b.candidate, t.candidate)
WHERE COALESCE(b.ballots, 0) <> COALESCE(t.total, 0)
ORDER BY 1`

// Validate checks the invariant in one snapshot and returns the violations,
// ordered by candidate (none: the region is consistent).
func Validate(ctx context.Context, q Querier) ([]Violation, error) {
	rows, err := q.Query(ctx, validateSQL)
	if err != nil {
		return nil, fmt.Errorf("check ballots against totals: %w", err)
	}
	vs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Violation, error) {
		var v Violation
		err := r.Scan(&v.Candidate, &v.Name, &v.Ballots, &v.Total, &v.Snapshot)
		return v, err
	})
	if err != nil {
		return nil, fmt.Errorf("check ballots against totals: %w", err)
	}
	return vs, nil
}

// InconsistentError is the first check that found violations, when the
// loop fails fast.
type InconsistentError struct {
	Region     int
	Violations []Violation
}

func (e *InconsistentError) Error() string {
	v := e.Violations[0]
	msg := fmt.Sprintf("region %d: invariant violated in snapshot %s: candidate %s", e.Region, v.Snapshot, v)
	if n := len(e.Violations); n > 1 {
		msg += fmt.Sprintf(" (and %d more candidate(s))", n-1)
	}
	return msg
}

// RunValidator checks the region every `every` until ctx is
// done, then returns nil. Each violation is logged with the candidate and
// both numbers and counted in stats; an unreachable region is logged once
// per outage and counted in stats.Errors. With failFast the first check
// that finds violations ends the loop with an *InconsistentError. q is
// usually the region's pool.
func RunValidator(ctx context.Context, q Querier, region int, every time.Duration, failFast bool, log *slog.Logger, stats *ValidatorStats) error {
	if every <= 0 {
		return fmt.Errorf("region %d: validation period %s: must be positive (Options.ValidateEvery)", region, every)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if stats == nil {
		stats = &ValidatorStats{}
	}
	log = log.With("region", region)
	t := time.NewTicker(every)
	defer t.Stop()
	var unreachable, inconsistent bool
	for {
		vs, err := Validate(ctx, q)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			stats.Errors.Add(1)
			if !unreachable {
				log.Warn("validation cannot run; will keep trying", "err", err)
				unreachable = true
			}
		default:
			if unreachable {
				log.Info("validation running again")
				unreachable = false
			}
			stats.Checks.Add(1)
			stats.Violations.Add(int64(len(vs)))
			stats.LastViolations.Store(int64(len(vs)))
			stats.lastCheck.Store(time.Now().UnixNano())
			for _, v := range vs {
				log.Warn("invariant violated: ballots counted differ from the total",
					"candidate", v.Candidate, "name", v.Name, "ballots", v.Ballots, "total", v.Total)
			}
			if failFast && len(vs) > 0 {
				return &InconsistentError{Region: region, Violations: vs}
			}
			switch {
			case len(vs) == 0 && inconsistent:
				log.Info("workload is consistent again")
				inconsistent = false
			case len(vs) > 0:
				inconsistent = true
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
