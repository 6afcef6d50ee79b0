package runner

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/sink"
)

// ErrCancelled is returned when the user does not confirm.
var ErrCancelled = errors.New("cancelled: nothing was changed")

// Plan inspects the live servers and databases and returns what apply
// would do. It changes nothing: a stopped managed server is started to be
// inspected and stopped again.
func (r *Runner) Plan(ctx context.Context, t *config.Topology) (*Plan, error) {
	plan, _, _, err := r.plan(ctx, t, false)
	return plan, err
}

func (r *Runner) plan(ctx context.Context, t *config.Topology, keepStarted bool) (*Plan, *inspection, *State, error) {
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
	in, err := r.inspect(ctx, t.Candidates, t.Regions(), former, st.owned(), keepStarted)
	var re *regionError
	if errors.As(err, &re) {
		if reg, ok := t.Region(re.id); ok && reg.Pos.Line > 0 {
			return nil, nil, nil, t.Errorf(reg.Pos, "%s", re.msg)
		}
	}
	if err != nil {
		return nil, nil, nil, err
	}
	plan, err := computePlan(t, in.obs)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := canCreate(plan, in.obs); err != nil {
		return nil, nil, nil, err
	}
	plan.Notes = append(plan.Notes, notes...)
	return plan, in, st, nil
}

// canCreate checks that the plan's new databases can be created with the
// roles votr connects as, before anything is.
func canCreate(p *Plan, obs *Observed) error {
	for _, a := range p.Actions {
		if a.Op != Create || a.Kind != KindDatabase {
			continue
		}
		if s := obs.server(a.Server); s != nil && !s.Managed && !s.CreateDB {
			return fmt.Errorf("server %s: role %s may not create databases, and database %s of region %d does not exist yet: run ALTER ROLE %s CREATEDB; as a superuser, or connect as a role that may (see docs/operating.md, \"Least privilege\")",
				a.Server, s.Role, a.Database, *a.Region, pgx.Identifier{s.Role}.Sanitize())
		}
	}
	return nil
}

// ApplyResult is what Apply did.
type ApplyResult struct {
	Plan     *Plan // the plan it carried out
	Executed int   // actions executed
	Run      *RunResult
}

// Apply converges the live servers and databases to the topology: it
// prints the plan, asks for confirmation, and executes each action, recording
// state after each. With run set it then runs the sinks and workers until ctx
// ends or run.Duration passes, and prints the convergence report. The apply
// lock is held throughout.
func (r *Runner) Apply(ctx context.Context, t *config.Topology, run *RunOptions) (*ApplyResult, error) {
	changed := false
	release, err := r.lockUntilDone(&changed)
	if err != nil {
		return nil, err
	}
	defer release()

	plan, in, st, err := r.plan(ctx, t, true)
	if err != nil {
		return nil, err
	}
	defer in.closeExports(ctx)
	res := &ApplyResult{Plan: plan}
	if err := plan.WriteText(r.opts.Out); err != nil {
		return nil, err
	}
	if !plan.Empty() {
		if err := r.confirm(ctx, "Do you want to perform these actions? Only 'yes' will be accepted: ",
			"apply needs confirmation and stdin is not a terminal: rerun with --auto-approve to apply the plan above without asking"); err != nil {
			// Leave servers as they were found.
			for _, s := range in.obs.Servers {
				if s.StartedToInspect {
					if err := s.srv.managed.Stop(context.WithoutCancel(ctx)); err != nil {
						r.log.Warn("stopping a server started to inspect it", "server", s.Key, "err", err)
					}
				}
			}
			return nil, err
		}
	}

	changed = true
	if err := r.recordTopology(t, st); err != nil {
		return nil, err
	}
	if !plan.Empty() {
		fmt.Fprintln(r.opts.Out)
	}
	res.Executed, err = r.executePlan(ctx, t, plan, in, st)
	if err != nil {
		return res, err
	}
	if !plan.Empty() {
		add, change, destroy := plan.Counts()
		fmt.Fprintf(r.opts.Out, "\nApply complete! Resources: %d added, %d changed, %d destroyed.\n", add, change, destroy)
	}
	if run == nil {
		return res, nil
	}
	res.Run, err = r.run(ctx, t, *run)
	return res, err
}

// recordTopology records the topology file and its regions and servers in
// the state before anything is changed.
func (r *Runner) recordTopology(t *config.Topology, st *State) error {
	if abs, err := filepath.Abs(t.Path); err == nil {
		st.Topology = abs
	}
	for _, reg := range t.Regions() {
		st.addRegion(reg, false)
		if name, ok := reg.LocalServer(); ok {
			st.addServer(reg.ServerKey(), r.serverDir(name))
		}
	}
	return r.saveState(st)
}

// executePlan carries out the plan's actions in order, printing one line
// per action and recording the state after each. It returns how many it
// executed.
func (r *Runner) executePlan(ctx context.Context, t *config.Topology, plan *Plan, in *inspection, st *State) (int, error) {
	n := 0
	for i, a := range plan.Actions {
		if interrupted(r.opts.Interrupt) {
			return n, fmt.Errorf("interrupted after %d of %d actions; run apply again to finish", i, len(plan.Actions))
		}
		start := time.Now()
		// One whole line per action, once it is done, so that log lines
		// of the action (a server starting) never split it.
		if err := r.executeAction(ctx, t, in, st, a); err != nil {
			fmt.Fprintf(r.opts.Out, "  %s %s %s: FAILED\n", a.Op.symbol(), a.Kind, a.Target)
			return n, fmt.Errorf("%s %s %s: %w", a.Op, a.Kind, a.Target, err)
		}
		fmt.Fprintf(r.opts.Out, "  %s %s %s: %s (%s)\n", a.Op.symbol(), a.Kind, a.Target, a.Op.done(), time.Since(start).Round(time.Millisecond))
		n++
		if err := r.saveState(st); err != nil {
			return n, err
		}
		r.log.Debug("action done", "op", a.Op, "kind", a.Kind, "target", a.Target)
		if r.opts.FailAfter > 0 && i+1 == r.opts.FailAfter {
			return n, fmt.Errorf("injected failure after action %d (%s)", i+1, a)
		}
	}
	return n, nil
}

// confirm asks the user to type yes. Without a terminal it refuses with
// refusal (which says how to proceed) unless AutoApprove is set.
func (r *Runner) confirm(ctx context.Context, question, refusal string) error {
	if r.opts.AutoApprove {
		return nil
	}
	if !r.opts.Terminal {
		return errors.New(refusal)
	}
	fmt.Fprint(r.opts.Out, "\n"+question)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r.opts.In).ReadString('\n')
		answer <- strings.TrimSpace(line)
	}()
	select {
	case <-ctx.Done():
		fmt.Fprintln(r.opts.Out)
		return ErrCancelled
	case a := <-answer:
		if a != "yes" {
			return ErrCancelled
		}
		return nil
	}
}

// executeAction carries out one action. Every action is idempotent: run again
// after a crash, it finds its work done and succeeds.
func (r *Runner) executeAction(ctx context.Context, t *config.Topology, in *inspection, st *State, a Action) error {
	srv := in.servers[a.Server]
	if srv == nil {
		return fmt.Errorf("internal: server %s was not inspected", a.Server)
	}
	var reg config.Region
	switch a.Kind {
	case KindDatabase, KindSchema, KindSeed:
		var ok bool
		if a.Region == nil {
			return fmt.Errorf("internal: %s action without a region", a.Kind)
		}
		if reg, ok = t.Region(*a.Region); !ok {
			return fmt.Errorf("internal: region %d is not in the topology", *a.Region)
		}
	}
	switch {
	case a.Kind == KindServer:
		if err := srv.managed.Start(ctx); err != nil {
			return err
		}
		st.addServer(srv.key, srv.dir)
		return nil
	case a.Kind == KindDatabase && a.Op == Create:
		// Recorded before it exists: if this process dies right after
		// CREATE DATABASE, the next apply still knows the database is votr's.
		st.addRegion(reg, true)
		if err := r.saveState(st); err != nil {
			return err
		}
		return createDatabase(ctx, srv, reg)
	case a.Kind == KindSchema:
		return withTx(ctx, srv, a.Database, func(tx pgx.Tx) error {
			for _, stmt := range schemaStatements(reg.ID) {
				if _, err := tx.Exec(ctx, stmt); err != nil {
					return fmt.Errorf("create schema: %w", err)
				}
			}
			return nil
		})
	case a.Kind == KindSeed:
		return withTx(ctx, srv, a.Database, func(tx pgx.Tx) error {
			if err := tx.SendBatch(ctx, schema.Seed(t.Candidates)).Close(); err != nil {
				return fmt.Errorf("seed candidates: %w", err)
			}
			return nil
		})
	case a.Kind == KindSlot && a.Op == Create && a.Snapshot:
		// Recorded first: a slot this process dies holding is still
		// votr's for destroy.
		st.addSlot(StateSlot{Server: srv.key, Name: a.Name, Database: a.Database, Feed: a.Feed})
		if err := r.saveState(st); err != nil {
			return err
		}
		exp, err := createSlotExport(ctx, srv, a.Database, a.Name)
		if err != nil {
			return err
		}
		in.exports[a.Feed].close(ctx)
		in.exports[a.Feed] = exp
		r.log.Info("slot created with an exported snapshot", "feed", a.Feed, "slot", a.Name, "snapshot", exp.snapshot, "consistent_point", exp.consistent)
		return nil
	case a.Kind == KindSlot && a.Op == Create:
		if err := createSlot(ctx, srv, a.Database, a.Name); err != nil {
			return err
		}
		st.addSlot(StateSlot{Server: srv.key, Name: a.Name, Database: a.Database, Feed: a.Feed})
		return nil
	case a.Kind == KindSlot && a.Op == Destroy:
		if err := dropSlot(ctx, srv, a.Name); err != nil {
			return err
		}
		st.removeSlot(srv.key, a.Name)
		return nil
	case a.Kind == KindBackfill:
		f, err := t.ParseFeed(a.Feed)
		if err != nil {
			return err
		}
		exp := in.exports[a.Feed]
		if exp == nil {
			return fmt.Errorf("internal: feed %s has no exported snapshot (its slot is created with one just before); run apply again", a.Feed)
		}
		defer func() {
			exp.close(ctx)
			delete(in.exports, a.Feed)
		}()
		return r.backfill(ctx, t, in, f, exp)
	case a.Kind == KindCheckpoint && a.Op == Create:
		return withConn(ctx, srv, a.Database, func(c *pgx.Conn) error {
			return sink.CheckpointsIn(c).Add(ctx, a.Feed)
		})
	case a.Kind == KindCheckpoint && a.Op == Destroy:
		return withConn(ctx, srv, a.Database, func(c *pgx.Conn) error {
			return sink.CheckpointsIn(c).Remove(ctx, a.Feed)
		})
	case a.Kind == KindOrigin && a.Op == Destroy:
		return dropOrigin(ctx, srv, a.Name)
	case a.Kind == KindPublication && a.Op == Destroy:
		return withConn(ctx, srv, a.Database, func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, `DROP PUBLICATION IF EXISTS `+pgx.Identifier{a.Name}.Sanitize())
			return err
		})
	}
	return fmt.Errorf("internal: no way to %s a %s", a.Op, a.Kind)
}

// schemaStatements are schema.Create plus what it cannot repair: tables
// missing from an existing publication.
func schemaStatements(region int) []string {
	stmts := schema.Create(region)
	for _, tbl := range schema.Tables {
		stmts = append(stmts, `DO $$ BEGIN
			IF NOT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = '`+schema.Publication+`'
			               AND schemaname = 'public' AND tablename = '`+tbl+`') THEN
				ALTER PUBLICATION `+schema.Publication+` ADD TABLE public.`+tbl+`;
			END IF;
		END $$`)
	}
	return stmts
}

func withConn(ctx context.Context, srv *server, db string, fn func(*pgx.Conn) error) error {
	var dsn string
	var err error
	if db == "" {
		dsn, err = srv.maintenanceDSN()
	} else {
		dsn, err = srv.dsn(db)
	}
	if err != nil {
		return err
	}
	conn, err := connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(conn)
}

func withTx(ctx context.Context, srv *server, db string, fn func(pgx.Tx) error) error {
	return withConn(ctx, srv, db, func(c *pgx.Conn) error {
		return pgx.BeginFunc(ctx, c, fn)
	})
}

// pgCode is the SQLSTATE of err, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// createDatabase makes the region's database and marks it as votr's. An
// existing database (created by an earlier, interrupted apply) is fine.
func createDatabase(ctx context.Context, srv *server, reg config.Region) error {
	return withConn(ctx, srv, "", func(c *pgx.Conn) error {
		ident := pgx.Identifier{reg.Database}.Sanitize()
		if _, err := c.Exec(ctx, `CREATE DATABASE `+ident); err != nil && pgCode(err) != "42P04" {
			return fmt.Errorf("create database: %w", err)
		}
		_, err := c.Exec(ctx, `COMMENT ON DATABASE `+ident+` IS `+schema.QuoteLiteral(createdComment(reg.ID)))
		if err != nil {
			return fmt.Errorf("mark database as votr's: %w", err)
		}
		return nil
	})
}

// createSlot makes a feed's logical slot in the source database unless it
// is there already.
func createSlot(ctx context.Context, srv *server, db, name string) error {
	return withConn(ctx, srv, db, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')
			WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, name)
		if err != nil && pgCode(err) != "42710" {
			return fmt.Errorf("create replication slot: %w", err)
		}
		return nil
	})
}

// slotReleaseWait is how long dropSlot waits for an active slot to be
// released: a sink just stopped, or a killed apply's replication connection
// that the server has not noticed yet, lets go within moments.
const slotReleaseWait = 10 * time.Second

// dropSlot drops a slot if it exists; one still active after
// slotReleaseWait is reported with the process holding it.
func dropSlot(ctx context.Context, srv *server, name string) error {
	return withConn(ctx, srv, "", func(c *pgx.Conn) error {
		deadline := time.Now().Add(slotReleaseWait)
		for {
			slots, err := listSlots(ctx, c)
			if err != nil {
				return err
			}
			i := slices.IndexFunc(slots, func(s Slot) bool { return s.Name == name && s.Active })
			if i < 0 {
				break
			}
			if time.Now().After(deadline) {
				return errActiveSlot(slots[i], srv.key)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		_, err := c.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, name)
		if err != nil {
			return fmt.Errorf("drop replication slot %s: %w", name, err)
		}
		return nil
	})
}

func errActiveSlot(s Slot, server string) error {
	return fmt.Errorf("replication slot %s on %s is in use by %s: stop that sink (or `votr apply`) first, then run this again", s.Name, server, s.holder())
}

// dropOrigin drops a replication origin if it exists.
func dropOrigin(ctx context.Context, srv *server, name string) error {
	return withConn(ctx, srv, "", func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1`, name)
		if err != nil {
			return fmt.Errorf("drop replication origin %s: %w", name, err)
		}
		return nil
	})
}

// interrupted reports whether ch (may be nil) is closed.
func interrupted(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
