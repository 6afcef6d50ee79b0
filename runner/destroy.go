package runner

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
)

// DestroyPlan computes what destroy would remove: for the topology t and
// the regions the state file records (t may be nil: the state alone).
func (r *Runner) DestroyPlan(ctx context.Context, t *config.Topology) (*plan.Plan, error) {
	p, _, err := r.destroyPlan(ctx, t)
	return p, err
}

// Destroy removes everything apply made for t and for the regions the
// state records: replication slots and origins of votr's feeds, the votr
// databases (with their publications and data) and the managed servers. It
// refuses while any of those slots is in use. Databases that are not votr's
// are left alone.
func (r *Runner) Destroy(ctx context.Context, t *config.Topology) (*plan.Plan, error) {
	p, _, err := r.carryOut(ctx, procedure{
		prepare:  func(ctx context.Context) (*plan.Plan, *execution, error) { return r.destroyPlan(ctx, t) },
		print:    r.writeDestroyPlan,
		question: "Do you really want to destroy all these resources? Only 'yes' will be accepted: ",
		refusal:  "destroy needs confirmation and stdin is not a terminal: rerun with --auto-approve to destroy the resources above without asking",
		onEmpty:  r.removeState,
		finish:   r.removeState,
		summary: func(p *plan.Plan) string {
			return fmt.Sprintf("\nDestroy complete! Resources: %d destroyed.\n", len(p.Actions))
		},
	})
	return p, err
}

func (r *Runner) writeDestroyPlan(p *plan.Plan) error {
	if p.Empty() {
		var b strings.Builder
		b.WriteString("Nothing to destroy: no votr resources were found.\n")
		for _, n := range p.Notes {
			b.WriteString("  - " + n + "\n")
		}
		_, err := fmt.Fprint(r.opts.Out, b.String())
		return err
	}
	return p.WriteText(r.opts.Out)
}

// destroyRegions are the regions destroy looks at: the topology's and the
// state's, once each.
func (r *Runner) destroyRegions(t *config.Topology, st *State) ([]config.Region, error) {
	var regions []config.Region
	if t != nil {
		regions = append(regions, t.Regions()...)
	}
	for _, reg := range st.former(t) {
		reg.Connect = config.WithoutPassword(reg.Connect)
		regions = append(regions, reg)
	}
	if len(regions) == 0 {
		return nil, fmt.Errorf("nothing is recorded in %s: pass the topology file, e.g. `votr destroy examples/local.yaml`", r.statePath())
	}
	return regions, nil
}

// destroyPlan computes destroy's plan, with what executing it needs: the
// servers it inspected and the state.
func (r *Runner) destroyPlan(ctx context.Context, t *config.Topology) (*plan.Plan, *execution, error) {
	st, err := r.loadState()
	if err != nil {
		return nil, nil, err
	}
	regions, err := r.destroyRegions(t, st)
	if err != nil {
		return nil, nil, err
	}
	srvs, err := r.servers(regions)
	if err != nil {
		return nil, nil, err
	}
	owned := st.owned()
	p := &plan.Plan{}
	if t != nil {
		p.Topology = t.Path
	}
	in := &inspection{servers: map[string]*server{}, exports: map[string]*exportedSlot{}}
	var serverActions []plan.Action
	var active []string
	for _, s := range srvs {
		in.servers[s.key] = s
		ss, err := r.inspectServer(ctx, s, false)
		if err != nil {
			return nil, nil, err
		}
		if s.managed != nil {
			if !ss.Exists {
				continue
			}
			serverActions = append(serverActions, plan.Action{Op: plan.Destroy, Kind: plan.KindServer, Server: s.key, Target: s.key,
				Detail: "stop it and remove its data directory " + s.dir})
			if !ss.Running {
				continue // its data goes with it
			}
		}
		var dbs []string
		for _, reg := range regions {
			if reg.ServerKey() != s.key || !ss.Databases[reg.Database] || slices.Contains(dbs, reg.Database) {
				continue
			}
			mine, err := r.isVotrDatabase(ctx, s, reg.Database, owned[s.key+"/"+reg.Database])
			if err != nil {
				return nil, nil, err
			}
			if !mine {
				p.Notes = append(p.Notes, fmt.Sprintf("database %s is not votr's: left alone", plan.On(reg.Database, s.key)))
				continue
			}
			dbs = append(dbs, reg.Database)
		}
		actions, busy := plan.Teardown(ss, dbs)
		for _, sl := range busy {
			active = append(active, errActiveSlot(sl, s.key).Error())
		}
		p.Actions = append(p.Actions, actions...)
	}
	if len(active) > 0 {
		return nil, nil, fmt.Errorf("destroy refused, nothing was removed: %s", strings.Join(active, "; "))
	}
	p.Actions = append(p.Actions, serverActions...)
	return p, &execution{t: t, in: in, st: st}, nil
}

// isVotrDatabase says whether db carries votr's marks (votr.region, the
// comment CREATE DATABASE left) or the state says votr created it.
func (r *Runner) isVotrDatabase(ctx context.Context, s *server, db string, owned bool) (bool, error) {
	if owned {
		return true, nil
	}
	var mine bool
	err := withConn(ctx, s, db, func(c *pgx.Conn) error {
		ids, comment, err := regionMarks(ctx, c)
		mine = len(ids) > 0 || strings.HasPrefix(comment, "votr region ")
		return err
	})
	if err != nil {
		return false, fmt.Errorf("database %s: %w", plan.On(db, s.key), err)
	}
	return mine, nil
}
