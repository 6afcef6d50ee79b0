package runner

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
)

// Plan inspects the live servers and databases and returns what apply
// would do. It changes nothing: a stopped managed server stays stopped and
// is planned from the recorded state (the plan's notes say so), a running
// one is only read.
func (r *Runner) Plan(ctx context.Context, t *config.Topology) (*plan.Plan, error) {
	release, err := r.readLock()
	if err != nil {
		return nil, err
	}
	defer release()
	p, _, _, err := r.plan(ctx, t, false)
	return p, err
}

func (r *Runner) plan(ctx context.Context, t *config.Topology, keepStarted bool) (*plan.Plan, *inspection, *State, error) {
	st, err := r.loadState()
	if err != nil {
		return nil, nil, nil, err
	}
	// Former regions are inspected only on servers the topology still uses:
	// a server that left the topology cannot be reached without its URL.
	hosting := map[string]bool{}
	for _, reg := range t.Regions() {
		hosting[reg.ServerKey()] = true
	}
	var former []config.Region
	var notes []string
	for _, reg := range st.former(t) {
		if hosting[reg.ServerKey()] {
			former = append(former, reg)
		} else {
			notes = append(notes, fmt.Sprintf("region %d (database %s on %s) is no longer in the topology and its server is not either; `votr destroy` without a file removes it", reg.ID, reg.Database, reg.ServerKey()))
		}
	}
	in, err := r.inspect(ctx, t, t.Regions(), former, st, keepStarted)
	var re *regionError
	if errors.As(err, &re) {
		if reg, ok := t.Region(re.id); ok && reg.Pos.Line > 0 {
			return nil, nil, nil, t.Errorf(reg.Pos, "%s", re.msg)
		}
	}
	if err != nil {
		return nil, nil, nil, err
	}
	p, err := plan.Compute(t, in.obs)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := plan.CanCreate(p, in.obs); err != nil {
		return nil, nil, nil, err
	}
	if err := r.canRunServers(p, in); err != nil {
		return nil, nil, nil, err
	}
	// Whose the objects are comes first: another deployment's feeds are not
	// this one's to drain or give up.
	plan.Ownership(p, in.obs, r.opts.TakeOver)
	if keepStarted && len(p.Foreign) > 0 && !r.opts.TakeOver {
		return nil, nil, nil, plan.ForeignError("apply", p.Foreign, in.obs)
	}
	if err := r.checkUndrained(p, st, keepStarted); err != nil {
		return nil, nil, nil, err
	}
	p.Notes = append(p.Notes, notes...)
	return p, in, st, nil
}

// canRunServers checks, before the plan is shown, that the PostgreSQL
// server binaries are there for every managed server the plan creates or
// starts: a missing installation is named, with how to install it, instead
// of failing half-way through apply.
func (r *Runner) canRunServers(p *plan.Plan, in *inspection) error {
	for _, a := range p.Actions {
		if a.Kind != plan.KindServer || a.Op == plan.Destroy {
			continue
		}
		s := in.servers[a.Server]
		if s == nil || s.managed == nil {
			continue
		}
		if _, err := s.managed.Binaries(); err != nil {
			verb := "create"
			if a.Op == plan.Change {
				verb = "start"
			}
			return fmt.Errorf("server %s: the plan would %s it, but %w", a.Server, verb, err)
		}
	}
	return nil
}

// ApplyResult is what Apply did.
type ApplyResult struct {
	Plan     *plan.Plan // the plan it carried out
	Executed int        // actions executed
	Run      *RunResult
}

// Apply converges the live servers and databases to the topology: it
// prints the plan, asks for confirmation, and executes each action, recording
// state after each. With run set it then runs the sinks and workers until ctx
// ends or run.Duration passes, and prints the convergence report. The apply
// lock is held throughout.
func (r *Runner) Apply(ctx context.Context, t *config.Topology, run *RunOptions) (*ApplyResult, error) {
	res := &ApplyResult{}
	p, n, err := r.carryOut(ctx, procedure{
		prepare: func(ctx context.Context) (*plan.Plan, *execution, error) {
			p, in, st, err := r.plan(ctx, t, true)
			if err != nil {
				return nil, nil, err
			}
			return p, &execution{t: t, in: in, st: st}, nil
		},
		print:    func(p *plan.Plan) error { return p.WriteText(r.opts.Out) },
		question: "Do you want to perform these actions? Only 'yes' will be accepted: ",
		refusal:  "apply needs confirmation and stdin is not a terminal: rerun with --auto-approve to apply the plan above without asking",
		refused: func(ctx context.Context, x *execution) {
			// Leave servers as they were found.
			for _, s := range x.in.obs.Servers {
				if s.StartedToInspect {
					if err := x.in.servers[s.Key].managed.Stop(context.WithoutCancel(ctx)); err != nil {
						r.log.Warn("stopping a server started to inspect it", "server", s.Key, "err", err)
					}
				}
			}
		},
		begin:     func(x *execution) error { return r.recordTopology(t, x.st) },
		resumable: true,
		summary: func(p *plan.Plan) string {
			add, change, destroy := p.Counts()
			return fmt.Sprintf("\nApply complete! Resources: %d added, %d changed, %d destroyed.\n", add, change, destroy)
		},
		then: func(ctx context.Context) error {
			if run == nil {
				return nil
			}
			var err error
			res.Run, err = r.run(ctx, t, *run)
			return err
		},
	})
	if p == nil {
		return nil, err
	}
	res.Plan, res.Executed = p, n
	return res, err
}

// recordTopology records the topology file and its regions and servers in
// the state before anything is changed.
func (r *Runner) recordTopology(t *config.Topology, st *State) error {
	if abs, err := filepath.Abs(t.Path); err == nil {
		st.Topology = abs
	}
	for _, f := range t.Feeds() {
		st.forgetDrained(f.String())
	}
	for _, reg := range t.Regions() {
		st.addRegion(reg, false)
		if name, ok := reg.LocalServer(); ok {
			st.addServer(reg.ServerKey(), r.serverDir(name))
		}
	}
	return r.saveState(st)
}
