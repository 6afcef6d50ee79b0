package runner

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/sink"
)

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
		return nil, fmt.Errorf("connect to %s: %w", config.Redact(dsn), config.ScrubError(err, dsn))
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "votr apply"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s for replication: %w", config.Redact(dsn), config.ScrubError(err, dsn))
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

// backfill gives feed f's target the rows of its source as the snapshot
// exp exported shows them, through the sink's apply path (a conflicting row
// goes to the script's merge, as a replicated insert would), and records
// the feed's checkpoint at the slot's consistent point in the same target
// transaction: the copy holds what committed before that point, the slot
// streams what committed after. Progress is shown and logged.
func (r *Runner) backfill(ctx context.Context, t *config.Topology, in *inspection, f config.Feed, exp *exportedSlot) error {
	src, tgt := in.servers[f.Source.ServerKey()], in.servers[f.Target.ServerKey()]
	srcDSN, err := src.dsn(f.Source.Database)
	if err != nil {
		return err
	}
	tgtDSN, err := tgt.dsn(f.Target.Database)
	if err != nil {
		return err
	}
	p := &backfillProgress{r: r, feed: f.String(), every: 5 * time.Second}
	defer p.done()
	res, err := sink.Backfill(ctx, r.feedConfig(t, f, srcDSN, tgtDSN, r.log, nil), sink.Snapshot{Name: exp.snapshot, ConsistentPoint: exp.consistent}, func(bp sink.BackfillProgress) {
		p.show(f.String(), bp.Table, bp.Rows, bp.Estimate, bp.Elapsed)
	})
	if err != nil {
		return err
	}
	r.log.Info("backfilled", "feed", f.String(), "rows", res.Rows, "conflicts", res.Conflicts, "dead_lettered", res.DeadLettered,
		"elapsed", res.Elapsed.Round(time.Millisecond), "rows/s", fmt.Sprintf("%.0f", float64(res.Rows)/max(res.Elapsed.Seconds(), 0.001)),
		"checkpoint", res.Checkpoint, "consistent_point", exp.consistent)
	return nil
}

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
