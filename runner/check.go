package runner

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
	"github.com/votr-dev/votr/report"
	"github.com/votr-dev/votr/schema"
)

// gather reads the convergence report.
func (r *Runner) gather(ctx context.Context, t *config.Topology, regions []*regionRun, feeds []*feedRun) (*report.Report, error) {
	var rt []report.RegionTarget
	for _, rr := range regions {
		rt = append(rt, report.RegionTarget{ID: rr.reg.ID, Label: rr.reg.Label(), DSN: rr.dsn})
	}
	var ft []report.FeedTarget
	for _, f := range feeds {
		ft = append(ft, report.FeedTarget{Name: f.feed.String(), SourceID: f.feed.Source.ID, TargetID: f.feed.Target.ID,
			SourceDSN: f.srcDSN, TargetDSN: f.dstDSN, Slot: schema.Slot(f.feed.Source.Database, f.feed.Target.ID), SharedSlot: f.shared})
	}
	rep, err := report.Gather(ctx, rt, ft, t.Hub.ID)
	if err != nil {
		return nil, fmt.Errorf("convergence report: %w", err)
	}
	rep.WarnSlots(t.Sink.SlotWarnBytes)
	return rep, nil
}

// Check reads every region and feed and returns the convergence report.
// Managed servers that are stopped are started to be read and stopped again.
func (r *Runner) Check(ctx context.Context, t *config.Topology) (*report.Report, error) {
	release, err := r.readLock()
	if err != nil {
		return nil, err
	}
	defer release()
	stop, err := r.startToRead(ctx, t)
	if err != nil {
		return nil, err
	}
	defer stop()
	srvs, err := r.servers(t.Regions())
	if err != nil {
		return nil, err
	}
	regions, feeds, err := r.runTargets(ctx, t)
	if err != nil {
		return nil, err
	}
	if err := r.regionsExist(ctx, t, srvs); err != nil {
		return nil, err
	}
	return r.gather(ctx, t, regions, feeds)
}

// regionsExist fails, saying to run apply, when a reachable server lacks a
// region's database: there is nothing to check yet. Unreachable servers are
// left to the report, which shows them.
func (r *Runner) regionsExist(ctx context.Context, t *config.Topology, srvs []*server) error {
	var missing []string
	for _, s := range srvs {
		dsn, err := s.maintenanceDSN()
		if err != nil {
			return err
		}
		conn, err := connect(ctx, dsn)
		if err != nil {
			continue
		}
		var dbs []string
		rows, err := conn.Query(ctx, `SELECT datname FROM pg_database`)
		if err == nil {
			dbs, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			continue
		}
		for _, reg := range t.Regions() {
			if reg.ServerKey() == s.key && !slices.Contains(dbs, reg.Database) {
				missing = append(missing, fmt.Sprintf("%s (region %s)", plan.On(reg.Database, s.key), reg.Label()))
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("nothing to check: %s does not exist; run `votr apply %s` first", strings.Join(missing, ", "), t.Path)
	}
	return nil
}
