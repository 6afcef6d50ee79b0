package runner

import (
	"context"
	"fmt"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
)

// runTargets resolves every region's DSN (starting managed servers that are
// stopped) and every feed's.
func (r *Runner) runTargets(ctx context.Context, t *config.Topology) ([]*regionRun, []*feedRun, error) {
	dsns, err := r.regionDSNs(ctx, t, true)
	if err != nil {
		return nil, nil, err
	}
	var regions []*regionRun
	for _, reg := range t.Regions() {
		regions = append(regions, &regionRun{reg: reg, dsn: dsns[reg.ID]})
	}
	var feeds []*feedRun
	for _, f := range t.Feeds() {
		feeds = append(feeds, &feedRun{feed: f, srcDSN: dsns[f.Source.ID], dstDSN: dsns[f.Target.ID], shared: plan.SharedSlotOf(t, f), retained: -1})
	}
	return regions, feeds, nil
}

// regionDSNs maps region id → DSN. Managed servers must exist (apply makes
// them); stopped ones are started when start is set, else it is an error.
func (r *Runner) regionDSNs(ctx context.Context, t *config.Topology, start bool) (map[int]string, error) {
	srvs, err := r.servers(t.Regions())
	if err != nil {
		return nil, err
	}
	byKey := map[string]*server{}
	for _, s := range srvs {
		byKey[s.key] = s
		if s.managed == nil {
			continue
		}
		if !s.managed.Exists() {
			return nil, fmt.Errorf("managed server %s does not exist (under %s): run `votr apply %s` first", s.key, s.dir, t.Path)
		}
		if !s.managed.Running(ctx) {
			if !start {
				return nil, fmt.Errorf("managed server %s is stopped: run `votr apply %s` to start it", s.key, t.Path)
			}
			if err := s.managed.Start(ctx); err != nil {
				return nil, fmt.Errorf("server %s: %w", s.key, err)
			}
		}
	}
	out := map[int]string{}
	for _, reg := range t.Regions() {
		dsn, err := byKey[reg.ServerKey()].dsn(reg.Database)
		if err != nil {
			return nil, err
		}
		out[reg.ID] = dsn
	}
	return out, nil
}
