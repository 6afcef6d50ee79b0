package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
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
	var x *execution
	var lk *lock
	finish := func() error { return r.forget(x, lk) }
	p, n, err := r.carryOut(ctx, procedure{
		prepare: func(ctx context.Context) (*plan.Plan, *execution, error) {
			p, ex, err := r.destroyPlan(ctx, t)
			x = ex
			return p, ex, err
		},
		locked:   func(l *lock) { lk = l },
		print:    r.writeDestroyPlan,
		question: "Do you really want to destroy all these resources? Only 'yes' will be accepted: ",
		refusal:  "destroy needs confirmation and stdin is not a terminal: rerun with --auto-approve to destroy the resources above without asking",
		onEmpty: func() error {
			if err := finish(); err != nil {
				return err
			}
			_, err := fmt.Fprint(r.opts.Out, x.skippedText())
			return err
		},
		finish: finish,
		summary: func(p *plan.Plan) string {
			return fmt.Sprintf("\nDestroy complete! Resources: %d destroyed.\n", len(p.Actions)) + x.skippedText()
		},
	})
	if err != nil && p != nil && n < len(p.Actions) {
		var left []string
		for _, a := range p.Actions[n:] {
			left = append(left, fmt.Sprintf("%s %s", a.Kind, a.Target))
		}
		err = fmt.Errorf("%w\ndestroy stopped: %d of %d resources removed (listed above); not removed: %s. They stay recorded in %s: fix the cause and run destroy again",
			err, n, len(p.Actions), strings.Join(left, ", "), r.statePath())
	}
	return p, err
}

// forget ends a destroy: the state goes, with the lock file and the state
// dir once nothing else is in it, unless servers were skipped; then only
// their regions and slots stay recorded, for a later destroy or `votr
// state rm`.
func (r *Runner) forget(x *execution, lk *lock) error {
	if x != nil && len(x.skipped) > 0 {
		x.st.keepOnly(x.skipped)
		return r.saveState(x.st)
	}
	if err := r.removeState(); err != nil {
		return err
	}
	lk.remove()
	return nil
}

// skippedText says what destroy left on servers it could not reach.
func (x *execution) skippedText() string {
	if x == nil || len(x.skipped) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\nNot removed (server unreachable, skipped with --skip-unreachable):\n")
	var ids []string
	for _, sr := range x.st.Regions {
		fmt.Fprintf(&b, "  - region %d: database %s, with the slots and origins of its feeds\n", sr.ID, plan.On(sr.Database, sr.Server))
		ids = append(ids, fmt.Sprint(sr.ID))
	}
	fmt.Fprintf(&b, "They stay recorded in the state: run `votr destroy` again once the server is back, or `votr state rm %s` to forget them if it is gone for good.\n", strings.Join(ids, " "))
	return b.String()
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
	var active, foreign []string
	var skipped []string
	for _, s := range srvs {
		ss, err := r.inspectServer(ctx, s, false)
		var ue *unreachableError
		if errors.As(err, &ue) {
			if !r.opts.SkipUnreachable {
				return nil, nil, fmt.Errorf("destroy refused, nothing was removed: %w. Run destroy again once it is back; to remove everything else now and keep its regions recorded, run `votr destroy --skip-unreachable`; if it is gone for good, `votr state rm %s` forgets its regions",
					err, strings.Join(regionIDs(regions, s.key), " "))
			}
			r.log.Warn("server unreachable; skipped", "server", s.key, "err", err)
			skipped = append(skipped, s.key)
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		in.servers[s.key] = s
		if s.managed != nil {
			if !ss.Exists {
				// What a destroy killed midway left (no cluster, maybe a
				// postmaster still running on it) goes all the same.
				if _, err := os.Stat(s.dir); err == nil {
					serverActions = append(serverActions, plan.Action{Op: plan.Destroy, Kind: plan.KindServer, Server: s.key, Target: s.key,
						Detail: "stop what runs in it and remove its directory " + s.dir + " (no cluster: a destroy was interrupted?)"})
				}
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
			if o, ok := ss.Owners[reg.Database]; ok && o.Deployment != "" && o.Deployment != st.Deployment {
				if !r.opts.TakeOver {
					foreign = append(foreign, plan.Foreign{Server: s.key, Database: reg.Database, Owner: o}.String())
					continue
				}
				p.Notes = append(p.Notes, fmt.Sprintf("database %s belongs to %s; removed anyway (--take-over)", plan.On(reg.Database, s.key), o.Describe()))
			}
			dbs = append(dbs, reg.Database)
		}
		actions, busy := plan.Teardown(ss, dbs)
		for _, sl := range busy {
			active = append(active, errActiveSlot(sl, s.key).Error())
		}
		p.Actions = append(p.Actions, actions...)
	}
	if len(foreign) > 0 {
		return nil, nil, fmt.Errorf("destroy refused, nothing was removed: %s, not to this state dir's (deployment %s); another state dir manages them: run destroy with its --state-dir, or with --take-over to remove them from this one",
			strings.Join(foreign, "; "), st.Deployment)
	}
	if len(active) > 0 {
		return nil, nil, fmt.Errorf("destroy refused, nothing was removed: %s", strings.Join(active, "; "))
	}
	p.Actions = append(p.Actions, serverActions...)
	return p, &execution{t: t, in: in, st: st, skipped: skipped}, nil
}

// regionIDs are the ids of the regions on server key.
func regionIDs(regions []config.Region, key string) []string {
	var ids []string
	for _, reg := range regions {
		if reg.ServerKey() == key {
			ids = append(ids, fmt.Sprint(reg.ID))
		}
	}
	return ids
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
