package runner

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
)

// DestroyPlan computes what destroy would remove: for the topology t and
// the regions the state file records (t may be nil: the state alone).
func (r *Runner) DestroyPlan(ctx context.Context, t *config.Topology) (*Plan, error) {
	p, _, err := r.destroyPlan(ctx, t)
	return p, err
}

// Destroy removes everything apply made for t and for the regions the
// state records: replication slots and origins of votr's feeds, the votr
// databases (with their publications and data) and the managed servers. It
// refuses while any of those slots is in use. Databases that are not votr's
// are left alone.
func (r *Runner) Destroy(ctx context.Context, t *config.Topology) (*Plan, error) {
	changed := false
	release, err := r.lockUntilDone(&changed)
	if err != nil {
		return nil, err
	}
	defer release()

	plan, servers, err := r.destroyPlan(ctx, t)
	if err != nil {
		return nil, err
	}
	if err := r.writeDestroyPlan(plan); err != nil {
		return nil, err
	}
	if plan.Empty() {
		return plan, r.removeState()
	}
	if err := r.confirm(ctx, "Do you really want to destroy all these resources? Only 'yes' will be accepted: ",
		"destroy needs confirmation and stdin is not a terminal: rerun with --auto-approve to destroy the resources above without asking"); err != nil {
		return nil, err
	}
	fmt.Fprintln(r.opts.Out)
	changed = true
	for _, a := range plan.Actions {
		start := time.Now()
		if err := r.destroyOne(ctx, servers[a.Server], a); err != nil {
			fmt.Fprintf(r.opts.Out, "  - %s %s: FAILED\n", a.Kind, a.Target)
			return plan, fmt.Errorf("destroy %s %s: %w", a.Kind, a.Target, err)
		}
		fmt.Fprintf(r.opts.Out, "  - %s %s: destroyed (%s)\n", a.Kind, a.Target, time.Since(start).Round(time.Millisecond))
	}
	if err := r.removeState(); err != nil {
		return plan, err
	}
	fmt.Fprintf(r.opts.Out, "\nDestroy complete! Resources: %d destroyed.\n", len(plan.Actions))
	return plan, nil
}

func (r *Runner) writeDestroyPlan(p *Plan) error {
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
		reg.Connect = withoutPassword(reg.Connect)
		regions = append(regions, reg)
	}
	if len(regions) == 0 {
		return nil, fmt.Errorf("nothing is recorded in %s: pass the topology file, e.g. `votr destroy examples/local.yaml`", r.statePath())
	}
	return regions, nil
}

// withoutPassword drops the (redacted) password of a recorded URL, so that
// the driver falls back on PGPASSWORD or ~/.pgpass.
func withoutPassword(connect string) string {
	u, err := url.Parse(connect)
	if err != nil || u.User == nil || !strings.Contains(connect, "://") {
		return connect
	}
	u.User = url.User(u.User.Username())
	q := u.Query()
	if q.Has("password") {
		q.Del("password")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

func (r *Runner) destroyPlan(ctx context.Context, t *config.Topology) (*Plan, map[string]*server, error) {
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
	p := &Plan{}
	if t != nil {
		p.Topology = t.Path
	}
	bySrv := map[string]*server{}
	var serverActions []Action
	var active []string
	for _, s := range srvs {
		bySrv[s.key] = s
		ss, err := r.inspectServer(ctx, s, false)
		if err != nil {
			return nil, nil, err
		}
		if s.managed != nil {
			if !ss.Exists {
				continue
			}
			serverActions = append(serverActions, Action{Op: Destroy, Kind: KindServer, Server: s.key, Target: s.key,
				Detail: "stop it and remove its data directory " + s.dir})
			if !ss.Running {
				continue // its data goes with it
			}
		}
		var dbs []string
		for _, reg := range regions {
			if reg.ServerKey() != s.key || !ss.Databases[reg.Database] || containsStr(dbs, reg.Database) {
				continue
			}
			mine, err := r.isVotrDatabase(ctx, s, reg.Database, owned[s.key+"/"+reg.Database])
			if err != nil {
				return nil, nil, err
			}
			if !mine {
				p.Notes = append(p.Notes, fmt.Sprintf("database %s is not votr's: left alone", on(reg.Database, s.key)))
				continue
			}
			dbs = append(dbs, reg.Database)
		}
		for _, name := range sortedKeys(ss.Slots) {
			sl := ss.Slots[name]
			db, _, ok := schema.ParseSlot(name)
			if !ok || sl.Database != db || !containsStr(dbs, db) {
				continue
			}
			if sl.Active {
				active = append(active, errActiveSlot(sl, s.key).Error())
			}
			p.Actions = append(p.Actions, Action{Op: Destroy, Kind: KindSlot, Server: s.key, Database: db, Name: name, Target: on(name, s.key)})
		}
		for _, name := range sortedKeys(ss.Origins) {
			db, _, ok := schema.ParseOrigin(name)
			if !ok || !containsStr(dbs, db) {
				continue
			}
			p.Actions = append(p.Actions, Action{Op: Destroy, Kind: KindOrigin, Server: s.key, Name: name, Target: on(name, s.key)})
		}
		for _, db := range dbs {
			p.Actions = append(p.Actions, Action{Op: Destroy, Kind: KindDatabase, Server: s.key, Database: db, Target: on(db, s.key),
				Detail: "with its tables, publication and data"})
		}
	}
	if len(active) > 0 {
		return nil, nil, fmt.Errorf("destroy refused, nothing was removed: %s", strings.Join(active, "; "))
	}
	p.Actions = append(p.Actions, serverActions...)
	return p, bySrv, nil
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
		return false, fmt.Errorf("database %s: %w", on(db, s.key), err)
	}
	return mine, nil
}

func (r *Runner) destroyOne(ctx context.Context, s *server, a Action) error {
	switch a.Kind {
	case KindSlot:
		return dropSlot(ctx, s, a.Name)
	case KindOrigin:
		return dropOrigin(ctx, s, a.Name)
	case KindDatabase:
		return withConn(ctx, s, "", func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{a.Database}.Sanitize()+` WITH (FORCE)`)
			return err
		})
	case KindServer:
		if err := s.managed.Destroy(ctx); err != nil {
			return err
		}
		// The servers directory goes too once its last server is gone.
		if err := os.Remove(r.serverDir("")); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.log.Debug("servers directory kept", "err", err)
		}
		return nil
	}
	return fmt.Errorf("internal: cannot destroy a %s", a.Kind)
}

func containsStr(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
