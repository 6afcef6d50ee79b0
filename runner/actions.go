package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/sink"
)

// actFunc carries out one action on srv, the server it is about. Every
// action is idempotent: run again after a crash, it finds its work done and
// succeeds.
type actFunc func(ctx context.Context, x *execution, srv *server, a plan.Action) error

// kindActs are the functions that create, change and destroy one kind of
// resource; nil where no plan asks for that.
type kindActs struct{ create, change, destroy actFunc }

func (k kindActs) of(op plan.Op) actFunc {
	switch op {
	case plan.Create:
		return k.create
	case plan.Change:
		return k.change
	case plan.Destroy:
		return k.destroy
	}
	return nil
}

// acts is the table apply and destroy execute their actions through.
func (r *Runner) acts() map[string]kindActs {
	return map[string]kindActs{
		plan.KindServer:     {create: startServer, change: startServer, destroy: r.destroyServer},
		plan.KindDatabase:   {create: r.createDatabase, change: r.takeOverDatabase, destroy: dropDatabase},
		plan.KindSchema:     {create: createSchema, change: createSchema},
		plan.KindSeed:       {create: seed, change: seed},
		plan.KindSlot:       {create: r.createSlot, destroy: dropFeedSlot},
		plan.KindBackfill:   {create: r.backfillFeed},
		plan.KindCheckpoint: {create: createCheckpoint, destroy: dropCheckpoint},
		plan.KindMember:     {destroy: leaveShared},
		plan.KindOrigin: {destroy: func(ctx context.Context, _ *execution, srv *server, a plan.Action) error {
			return dropOrigin(ctx, srv, a.Name)
		}},
		plan.KindPublication: {destroy: dropPublication},
		plan.KindDrain:       {change: r.drainFormer},
	}
}

// region is the topology's region an action is about.
func (x *execution) region(a plan.Action) (config.Region, error) {
	if a.Region == nil {
		return config.Region{}, fmt.Errorf("internal: %s action without a region", a.Kind)
	}
	if x.t == nil {
		return config.Region{}, fmt.Errorf("internal: %s action without a topology", a.Kind)
	}
	reg, ok := x.t.Region(*a.Region)
	if !ok {
		return config.Region{}, fmt.Errorf("internal: region %d is not in the topology", *a.Region)
	}
	return reg, nil
}

func startServer(ctx context.Context, x *execution, srv *server, _ plan.Action) error {
	if err := srv.managed.Start(ctx); err != nil {
		return err
	}
	x.st.addServer(srv.key, srv.dir)
	return nil
}

func (r *Runner) destroyServer(ctx context.Context, _ *execution, srv *server, _ plan.Action) error {
	if err := srv.managed.Destroy(ctx); err != nil {
		return err
	}
	// The servers directory goes too once its last server is gone.
	if err := os.Remove(r.serverDir("")); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.log.Debug("servers directory kept", "err", err)
	}
	return nil
}

func (r *Runner) createDatabase(ctx context.Context, x *execution, srv *server, a plan.Action) error {
	reg, err := x.region(a)
	if err != nil {
		return err
	}
	// Recorded before it exists: if this process dies right after
	// CREATE DATABASE, the next apply still knows the database is votr's.
	x.st.addRegion(reg, true)
	if err := r.saveState(x.st); err != nil {
		return err
	}
	return createDatabase(ctx, srv, reg, r.ownerComment(reg.ID, x.st))
}

// takeOverDatabase records a database of another deployment (or of none)
// as this one's: the user said so with --take-over.
func (r *Runner) takeOverDatabase(ctx context.Context, x *execution, srv *server, a plan.Action) error {
	if a.Region == nil {
		return fmt.Errorf("internal: take-over of %s without a region", a.Target)
	}
	err := withConn(ctx, srv, "", func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `COMMENT ON DATABASE `+pgx.Identifier{a.Database}.Sanitize()+` IS `+schema.QuoteLiteral(r.ownerComment(*a.Region, x.st)))
		return err
	})
	if err != nil {
		return fmt.Errorf("take over database %s: %w", a.Database, err)
	}
	x.st.markCreated(srv.key, a.Database)
	return nil
}

func dropDatabase(ctx context.Context, _ *execution, srv *server, a plan.Action) error {
	return withConn(ctx, srv, "", func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{a.Database}.Sanitize()+` WITH (FORCE)`)
		return err
	})
}

func createSchema(ctx context.Context, x *execution, srv *server, a plan.Action) error {
	reg, err := x.region(a)
	if err != nil {
		return err
	}
	return withTx(ctx, srv, a.Database, func(tx pgx.Tx) error {
		for _, stmt := range schemaStatements(reg.ID) {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("create schema: %w", err)
			}
		}
		return nil
	})
}

func seed(ctx context.Context, x *execution, srv *server, a plan.Action) error {
	if _, err := x.region(a); err != nil {
		return err
	}
	return withTx(ctx, srv, a.Database, func(tx pgx.Tx) error {
		if err := tx.SendBatch(ctx, schema.Seed(x.t.Candidates)).Close(); err != nil {
			return fmt.Errorf("seed candidates: %w", err)
		}
		return nil
	})
}

func (r *Runner) createSlot(ctx context.Context, x *execution, srv *server, a plan.Action) error {
	rec := StateSlot{Server: srv.key, Name: a.Name, Database: a.Database, Feed: a.Feed}
	switch {
	case a.From != "":
		if err := copySlot(ctx, srv, a.Database, a.From, a.Name); err != nil {
			return err
		}
		x.st.addSlot(rec)
	case !a.Snapshot:
		if err := createSlot(ctx, srv, a.Database, a.Name); err != nil {
			return err
		}
		x.st.addSlot(rec)
	default:
		// Recorded first: a slot this process dies holding is still
		// votr's for destroy.
		x.st.addSlot(rec)
		if err := r.saveState(x.st); err != nil {
			return err
		}
		exp, err := createSlotExport(ctx, srv, a.Database, a.Name)
		if err != nil {
			return err
		}
		x.in.exports[a.Feed].close(ctx)
		x.in.exports[a.Feed] = exp
		r.log.Info("slot created with an exported snapshot", "feed", a.Feed, "slot", a.Name, "snapshot", exp.snapshot, "consistent_point", exp.consistent)
	}
	if a.Feed == "" {
		return nil // a shared slot
	}
	// A feed with its own slot reads it (sink.Fanout): a record of it
	// reading a shared slot is stale from here on.
	return leaveShared(ctx, x, srv, a)
}

// leaveShared removes the record of a.Feed reading a shared slot from the
// source database a.Database.
func leaveShared(ctx context.Context, _ *execution, srv *server, a plan.Action) error {
	return withConn(ctx, srv, a.Database, func(c *pgx.Conn) error {
		return sink.SlotMembersIn(c).Leave(ctx, a.Feed)
	})
}

// copySlot makes slot name in database db as a copy of slot from, at its
// position, unless it is there already (an earlier apply made it).
func copySlot(ctx context.Context, srv *server, db, from, name string) error {
	return withConn(ctx, srv, db, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `SELECT pg_copy_logical_replication_slot($1, $2)
			WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $2)`, from, name)
		if err != nil && pgCode(err) != "42710" {
			return fmt.Errorf("copy replication slot %s to %s: %w", from, name, err)
		}
		return nil
	})
}

func dropFeedSlot(ctx context.Context, x *execution, srv *server, a plan.Action) error {
	if err := dropSlot(ctx, srv, a.Name); err != nil {
		return err
	}
	x.st.removeSlot(srv.key, a.Name)
	return nil
}

func (r *Runner) backfillFeed(ctx context.Context, x *execution, _ *server, a plan.Action) error {
	if x.t == nil {
		return fmt.Errorf("internal: backfill without a topology")
	}
	f, err := x.t.ParseFeed(a.Feed)
	if err != nil {
		return err
	}
	exp := x.in.exports[a.Feed]
	if exp == nil {
		return fmt.Errorf("internal: feed %s has no exported snapshot (its slot is created with one just before); run apply again", a.Feed)
	}
	defer func() {
		exp.close(ctx)
		delete(x.in.exports, a.Feed)
	}()
	return r.backfill(ctx, x.t, x.in, f, exp)
}

func createCheckpoint(ctx context.Context, _ *execution, srv *server, a plan.Action) error {
	return withConn(ctx, srv, a.Database, func(c *pgx.Conn) error {
		return sink.CheckpointsIn(c).Add(ctx, a.Feed)
	})
}

func dropCheckpoint(ctx context.Context, x *execution, srv *server, a plan.Action) error {
	err := withConn(ctx, srv, a.Database, func(c *pgx.Conn) error {
		return sink.CheckpointsIn(c).Remove(ctx, a.Feed)
	})
	if err == nil {
		x.st.forgetDrained(a.Feed)
	}
	return err
}

func dropPublication(ctx context.Context, _ *execution, srv *server, a plan.Action) error {
	return withConn(ctx, srv, a.Database, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `DROP PUBLICATION IF EXISTS `+pgx.Identifier{a.Name}.Sanitize())
		return err
	})
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

// createDatabase makes the region's database and marks it as votr's with
// comment (region and deployment). An existing database (created by an
// earlier, interrupted apply) is fine, as is one whose creation commits
// while this one runs: a killed apply's CREATE DATABASE goes on in its
// server session after the process is gone, and the second creation then
// fails on pg_database's unique name, not as a duplicate database.
func createDatabase(ctx context.Context, srv *server, reg config.Region, comment string) error {
	return withConn(ctx, srv, "", func(c *pgx.Conn) error {
		ident := pgx.Identifier{reg.Database}.Sanitize()
		if _, err := c.Exec(ctx, `CREATE DATABASE `+ident); err != nil && !databaseExists(err) {
			return fmt.Errorf("create database: %w", err)
		}
		_, err := c.Exec(ctx, `COMMENT ON DATABASE `+ident+` IS `+schema.QuoteLiteral(comment))
		if err != nil {
			return fmt.Errorf("mark database as votr's: %w", err)
		}
		return nil
	})
}

// databaseExists reports whether CREATE DATABASE failed because the
// database exists, or came to exist while it ran.
func databaseExists(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "42P04" || pe.Code == "23505" && pe.ConstraintName == "pg_database_datname_index")
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
			i := slices.IndexFunc(slots, func(s plan.Slot) bool { return s.Name == name && s.Active })
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

func errActiveSlot(s plan.Slot, server string) error {
	return fmt.Errorf("replication slot %s on %s is in use by %s: stop that sink (or `votr apply`) first, then run this again", s.Name, server, s.Holder())
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
