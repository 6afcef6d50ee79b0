package runner

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/sink"
)

// inspection is what a plan is computed from, and how to undo the starts
// inspection made.
type inspection struct {
	obs     *plan.State
	servers map[string]*server
	// exports are slots apply created with an exported snapshot, by feed,
	// held open until their backfill has run.
	exports map[string]*exportedSlot
}

func (in *inspection) closeExports(ctx context.Context) {
	for f, e := range in.exports {
		e.close(ctx)
		delete(in.exports, f)
	}
}

// inspect looks at every server and database of regions (and of former, the
// regions the state records but the topology dropped). With start set (apply),
// a stopped managed server is started to be read and kept running; without
// it (plan), a stopped server stays stopped and its regions are taken from
// the recorded state: a read-only command never starts, stops or moves a
// server.
func (r *Runner) inspect(ctx context.Context, t *config.Topology, regions, former []config.Region, rec *State, start bool) (*inspection, error) {
	all := append(append([]config.Region{}, regions...), former...)
	srvs, err := r.servers(all)
	if err != nil {
		return nil, err
	}
	in := &inspection{obs: &plan.State{Deployment: rec.Deployment}, servers: map[string]*server{}, exports: map[string]*exportedSlot{}}
	for _, s := range srvs {
		in.servers[s.key] = s
		st, err := r.inspectServer(ctx, s, start)
		if err != nil {
			return nil, err
		}
		if st.Managed && st.Exists && !st.Running && !st.StartedToInspect {
			st.Stopped = true
			recordedSlots(st, rec)
		}
		in.obs.Servers = append(in.obs.Servers, st)
	}
	owned := rec.owned()
	for i, reg := range all {
		st := in.obs.Server(reg.ServerKey())
		if st.Stopped {
			if rs := recordedRegion(t, st, reg, rec, i >= len(regions)); rs != nil {
				in.obs.Regions = append(in.obs.Regions, rs)
			}
			continue
		}
		rs, err := r.inspectRegion(ctx, in.servers[reg.ServerKey()], st, reg, t.Candidates, owned, i >= len(regions))
		if err != nil {
			return nil, err
		}
		if rs == nil {
			continue
		}
		if i < len(regions) {
			in.obs.Regions = append(in.obs.Regions, rs)
		} else {
			in.obs.Former = append(in.obs.Former, rs)
		}
	}
	if err := in.slotsSinceMembers(ctx); err != nil {
		return nil, err
	}
	return in, nil
}

// slotsSinceMembers reads the slots of servers with a shared slot again,
// after the regions' records of which feeds read it, and adds those that
// appeared. A run moves a feed between its own slot and the shared one
// while this inspects (sink.Fanout records a feed as a member before it
// drops its own slot, and copies its own slot before it clears the
// record); the slots read before and after the records see every feed in
// one of the two places, where one reading could see it in neither and
// re-sync it for nothing.
func (in *inspection) slotsSinceMembers(ctx context.Context) error {
	for _, st := range in.obs.Servers {
		if st.Stopped || !st.Running || !slices.ContainsFunc(slices.Collect(maps.Keys(st.Slots)), func(n string) bool {
			_, ok := schema.ParseSharedSlot(n)
			return ok
		}) {
			continue
		}
		err := withConn(ctx, in.servers[st.Key], "", func(c *pgx.Conn) error {
			slots, err := listSlots(ctx, c)
			for _, sl := range slots {
				if _, ok := st.Slots[sl.Name]; !ok {
					st.Slots[sl.Name] = sl
				}
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("server %s: %w", st.Key, err)
		}
	}
	return nil
}

// inspectServer reads a server's catalogs. A stopped managed server is
// started to be read when start is set, else reported as not running.
func (r *Runner) inspectServer(ctx context.Context, s *server, start bool) (*plan.Server, error) {
	st := &plan.Server{Key: s.key, Managed: s.managed != nil,
		Databases: map[string]bool{}, Slots: map[string]plan.Slot{}, Origins: map[string]bool{}}
	if s.managed != nil {
		st.Dir = s.dir
		st.Exists, st.DataLost = s.managed.Exists(), s.managed.DataLost()
		if !st.Exists {
			return st, nil
		}
		st.Running = s.managed.Running(ctx)
		if port, taken := s.managed.PortInUse(ctx); taken && !st.Running {
			st.PortTaken = port
		}
		if !st.Running && !start {
			return st, nil
		}
		if !st.Running {
			// The data is there but the process is not: start it to see
			// what it holds (apply goes on with it running).
			if err := s.managed.Start(ctx); err != nil {
				return nil, fmt.Errorf("server %s: start to inspect it: %w", s.key, err)
			}
			st.StartedToInspect = true
		}
	}
	dsn, err := s.maintenanceDSN()
	if err != nil {
		return nil, err
	}
	conn, err := connect(ctx, dsn)
	if err != nil {
		if s.managed == nil && pgCode(err) == "" {
			return nil, &unreachableError{server: s.key, err: err}
		}
		return nil, fmt.Errorf("server %s: %w", s.key, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if s.managed == nil {
		st.Exists, st.Running = true, true
	}
	var walLevel string
	if err := conn.QueryRow(ctx, `SELECT current_setting('wal_level'), current_setting('max_slot_wal_keep_size')`).Scan(&walLevel, &st.MaxSlotWALKeep); err != nil {
		return nil, fmt.Errorf("server %s: %w", s.key, err)
	}
	if walLevel != "logical" {
		return nil, fmt.Errorf("server %s has wal_level = %s, but votr's feeds need logical replication: run ALTER SYSTEM SET wal_level = logical; on it and restart the server", s.key, walLevel)
	}
	// Every region is the source of a feed, so the role must be able to
	// create and stream replication slots; checked here, before anything is
	// created, rather than failing half-way through an apply.
	var super, replication bool
	err = conn.QueryRow(ctx, `SELECT current_user::text, rolsuper, rolreplication, rolsuper OR rolcreatedb
		FROM pg_roles WHERE rolname = current_user`).Scan(&st.Role, &super, &replication, &st.CreateDB)
	if err != nil {
		return nil, fmt.Errorf("server %s: read the role's attributes: %w", s.key, err)
	}
	if !super && !replication {
		return nil, fmt.Errorf("server %s: role %s lacks the REPLICATION attribute, which votr's feeds need to create and stream replication slots: run ALTER ROLE %s REPLICATION; as a superuser, or connect as a role that has it (see docs/operating.md, \"Least privilege\")",
			s.key, st.Role, pgx.Identifier{st.Role}.Sanitize())
	}
	// The comments say which databases are votr's and whose: one query
	// answers ownership for every database, slot and origin (see
	// plan.Owner).
	rows, err := conn.Query(ctx, `SELECT datname::text, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database`)
	if err != nil {
		return nil, fmt.Errorf("server %s: list databases: %w", s.key, err)
	}
	var name, comment string
	st.Owners = map[string]plan.Owner{}
	if _, err := pgx.ForEachRow(rows, []any{&name, &comment}, func() error {
		st.Databases[name] = true
		if o, ok := plan.ParseOwner(comment); ok {
			st.Owners[name] = o
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("server %s: list databases: %w", s.key, err)
	}
	slots, err := listSlots(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("server %s: %w", s.key, err)
	}
	for _, sl := range slots {
		st.Slots[sl.Name] = sl
	}
	rows, err = conn.Query(ctx, `SELECT roname FROM pg_replication_origin`)
	if err != nil {
		return nil, fmt.Errorf("server %s: list replication origins: %w", s.key, err)
	}
	origins, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("server %s: list replication origins: %w", s.key, err)
	}
	for _, o := range origins {
		st.Origins[o] = true
	}
	return st, nil
}

// unreachableError is a server that did not answer at all (refused, timed
// out, no route): not a server that answered with an error.
type unreachableError struct {
	server string
	err    error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("server %s is unreachable: %v", e.server, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// listSlots reads the logical slots of a server with their holders.
func listSlots(ctx context.Context, conn *pgx.Conn) ([]plan.Slot, error) {
	rows, err := conn.Query(ctx, `
		SELECT s.slot_name::text, coalesce(s.plugin::text, ''), coalesce(s.database::text, ''), s.active,
		       coalesce(s.active_pid, 0), coalesce(a.application_name, ''), coalesce(host(a.client_addr), ''),
		       coalesce(s.wal_status = 'lost', false), coalesce(s.wal_status, ''),
		       coalesce((pg_current_wal_lsn() - s.restart_lsn)::bigint, -1)
		FROM pg_replication_slots s
		LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
		WHERE s.slot_type = 'logical'`)
	if err != nil {
		return nil, fmt.Errorf("list replication slots: %w", err)
	}
	slots, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (plan.Slot, error) {
		var s plan.Slot
		err := row.Scan(&s.Name, &s.Plugin, &s.Database, &s.Active, &s.ActivePID, &s.Application, &s.Client, &s.Lost, &s.WALStatus, &s.RetainedBytes)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("list replication slots: %w", err)
	}
	return slots, nil
}

// regionError is a problem with one region found by inspection; plan
// reports it at the region's position in the topology file.
type regionError struct {
	id  int
	msg string
}

func (e *regionError) Error() string { return e.msg }

// errNotVotr is the error for a database that votr must not take over.
func errNotVotr(id int, db, server string) error {
	return &regionError{id, fmt.Sprintf("database %s on %s exists but was not created by votr; choose another `database:` for that region or drop it", db, server)}
}

// inspectRegion reads one region's database. owned lists "server/database"
// pairs the state file says votr created (the database may predate its
// schema when an apply stopped right after CREATE DATABASE). For a former
// region, a database that is gone or not votr's yields nil: there is nothing
// of votr's left to report.
func (r *Runner) inspectRegion(ctx context.Context, srv *server, st *plan.Server, reg config.Region, candidates int, owned map[string]bool, former bool) (*plan.Region, error) {
	rs := &plan.Region{ID: reg.ID, Database: reg.Database, Server: st.Key, Checkpoints: map[string]bool{}}
	rs.Missing = allObjects()
	if !st.Databases[reg.Database] {
		if former {
			return nil, nil
		}
		return rs, nil
	}
	rs.Exists = true
	dsn, err := srv.dsn(reg.Database)
	if err != nil {
		return nil, err
	}
	conn, err := connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("region %s: %w", reg.Label(), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	fail := func(what string, err error) error {
		return fmt.Errorf("region %s: database %s on %s: %s: %w", reg.Label(), reg.Database, st.Key, what, err)
	}

	ids, comment, err := regionMarks(ctx, conn)
	if err != nil {
		return nil, fail("read votr.region", err)
	}
	switch {
	case slices.Contains(ids, int32(reg.ID)):
	case len(ids) > 0:
		if former {
			return nil, nil
		}
		return nil, &regionError{reg.ID, fmt.Sprintf("database %s on %s belongs to votr region %d, not region %s; give region %d another `database:` (region ids are stable: do not renumber regions)", reg.Database, st.Key, ids[0], reg.Label(), reg.ID)}
	case isOwnerComment(comment, reg.ID), owned[st.Key+"/"+reg.Database]:
		// Created by votr; its schema was not made yet.
	default:
		if former {
			return nil, nil
		}
		return nil, errNotVotr(reg.ID, reg.Database, st.Key)
	}

	rs.Missing, rs.Outdated, err = missingObjects(ctx, conn, reg.ID)
	if err != nil {
		return nil, fail("inspect schema", err)
	}
	// Before any query reads the tables: a retyped column would fail them
	// with a raw SQL error.
	drift, err := columnDrift(ctx, conn, reg.Label())
	if err != nil {
		return nil, fail("inspect columns", err)
	}
	if drift != "" {
		return nil, &regionError{reg.ID, fmt.Sprintf("region %s: database %s on %s: %s", reg.Label(), reg.Database, st.Key, drift)}
	}
	if !slices.Contains(rs.Missing, "table public.candidates") && !slices.Contains(rs.Missing, "table public.totals") {
		ids := make([]string, 0)
		for _, c := range schema.Candidates(candidates) {
			ids = append(ids, c.ID)
		}
		err := conn.QueryRow(ctx, `SELECT
				(SELECT count(*) FROM public.candidates c JOIN public.totals t USING (candidate) WHERE c.candidate = ANY($1::uuid[])),
				(SELECT count(*) FROM public.candidates WHERE NOT candidate = ANY($1::uuid[]))`, ids).Scan(&rs.Seeded, &rs.Extra)
		if err != nil {
			return nil, fail("count seeded candidates", err)
		}
		q := `SELECT EXISTS (SELECT 1 FROM public.candidates WHERE version > 1)
			OR EXISTS (SELECT 1 FROM public.totals WHERE total <> 0)`
		if !slices.Contains(rs.Missing, "table public.ballots") {
			q += ` OR EXISTS (SELECT 1 FROM public.ballots)`
		}
		if err := conn.QueryRow(ctx, q).Scan(&rs.HasData); err != nil {
			return nil, fail("look for data", err)
		}
	}
	rs.HasPublication = !slices.Contains(rs.Missing, objPublication)
	if !slices.Contains(rs.Missing, "table votr.checkpoints") {
		feeds, err := sink.CheckpointsIn(conn).Feeds(ctx)
		if err != nil {
			return nil, fail("look up feeds", err)
		}
		for _, f := range feeds {
			rs.Checkpoints[f] = true
		}
	}
	if !slices.Contains(rs.Missing, "table votr.slot_members") {
		if rs.SlotMembers, err = sink.SlotMembersIn(conn).All(ctx); err != nil {
			return nil, fail("look up shared slot members", err)
		}
	}
	return rs, nil
}

// regionMarks reads what marks a database as votr's: the region ids in
// votr.region (none when the table is missing) and the database comment.
func regionMarks(ctx context.Context, conn *pgx.Conn) (ids []int32, comment string, err error) {
	var hasRegion bool
	err = conn.QueryRow(ctx, `
		SELECT to_regclass('votr.region') IS NOT NULL, coalesce(shobj_description(d.oid, 'pg_database'), '')
		FROM pg_database d WHERE d.datname = current_database()`).Scan(&hasRegion, &comment)
	if err != nil || !hasRegion {
		return nil, comment, err
	}
	rows, err := conn.Query(ctx, `SELECT id FROM votr.region ORDER BY id`)
	if err != nil {
		return nil, "", err
	}
	ids, err = pgx.CollectRows(rows, pgx.RowTo[int32])
	return ids, comment, err
}

// isOwnerComment says whether comment is the mark votr puts on region id's
// database from the moment it creates it (see Runner.ownerComment), so that
// a database whose schema an interrupted apply did not make yet is still
// recognised as votr's.
func isOwnerComment(comment string, id int) bool {
	o, ok := plan.ParseOwner(comment)
	return ok && o.Region == id
}

// recordedSlots fills a stopped server's slots from the state: the slots
// apply created there and did not drop.
func recordedSlots(st *plan.Server, rec *State) {
	for _, sl := range rec.Slots {
		if sl.Server == st.Key {
			st.Slots[sl.Name] = plan.Slot{Name: sl.Name, Plugin: "pgoutput", Database: sl.Database, RetainedBytes: -1}
		}
	}
}

// recordedRegion is region reg on a stopped server as the state records it,
// for a plan that leaves the server stopped: a database votr created is
// taken as complete, seeded and holding data, with a checkpoint for each
// inbound feed whose slot is recorded; one it did not create is planned
// from nothing. Apply starts the server and plans from what it holds. A
// former region on a stopped server is left out (nil): its removals wait
// for a plan that can read it.
func recordedRegion(t *config.Topology, st *plan.Server, reg config.Region, rec *State, former bool) *plan.Region {
	if former {
		return nil
	}
	rs := &plan.Region{ID: reg.ID, Database: reg.Database, Server: st.Key, Checkpoints: map[string]bool{}}
	if !rec.owned()[st.Key+"/"+reg.Database] {
		rs.Missing = allObjects()
		return rs
	}
	rs.Exists, rs.Seeded, rs.HasData, rs.HasPublication = true, t.Candidates, true, true
	st.Databases[reg.Database] = true
	for _, f := range t.Feeds() {
		if f.Target.ID != reg.ID {
			continue
		}
		name := schema.Slot(f.Source.Database, f.Target.ID)
		if slices.ContainsFunc(rec.Slots, func(s StateSlot) bool { return s.Name == name && s.Server == f.Source.ServerKey() }) {
			rs.Checkpoints[f.String()] = true
		}
	}
	return rs
}

// The schema objects plan checks, beyond schema.Objects.
const (
	objPublication = "publication votr"
)

// The triggers votr puts on each workload table (schema.Create).
var tableTriggers = []string{"votr_stamp", "votr_tombstone", "votr_tombstone_move"}

func functionObject(f schema.Function) string { return "function " + f.Name }

func namedTriggerObject(name, table string) string {
	return "trigger " + name + " on public." + table
}
func identityObject(table string) string {
	return "replica identity full on public." + table
}

func allObjects() []string {
	out := append([]string{}, schema.Objects...)
	for _, f := range schema.Functions(0) {
		out = append(out, functionObject(f))
	}
	for _, t := range schema.Tables {
		for _, tg := range tableTriggers {
			out = append(out, namedTriggerObject(tg, t))
		}
		out = append(out, identityObject(t))
	}
	return append(out, objPublication)
}

// missingObjects lists the schema objects region's database lacks (the
// tables its publication lacks among them), and the trigger functions it
// holds with another body than this votr's (outdated).
func missingObjects(ctx context.Context, conn *pgx.Conn, region int) (missing, outdated []string, err error) {
	names := make([]string, len(schema.Objects))
	for i, o := range schema.Objects {
		names[i] = strings.TrimPrefix(o, "table ")
	}
	rows, err := conn.Query(ctx, `SELECT n FROM unnest($1::text[]) n WHERE to_regclass(n) IS NULL`, names)
	if err != nil {
		return nil, nil, err
	}
	absent, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, err
	}
	for _, n := range absent {
		missing = append(missing, "table "+n)
	}
	missing, outdated, err = functionsOutOfDate(ctx, conn, region, missing)
	if err != nil {
		return nil, nil, err
	}
	rows, err = conn.Query(ctx, `
		SELECT c.relname::text, c.relreplident = 'f',
		       ARRAY(SELECT t.tgname::text FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = ANY($2))
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relname = ANY($1)`, schema.Tables, tableTriggers)
	if err != nil {
		return nil, nil, err
	}
	type tableFacts struct {
		full     bool
		triggers []string
	}
	facts := map[string]tableFacts{}
	var name string
	var f tableFacts
	if _, err := pgx.ForEachRow(rows, []any{&name, &f.full, &f.triggers}, func() error {
		facts[name] = f
		return nil
	}); err != nil {
		return nil, nil, err
	}
	for _, t := range schema.Tables {
		for _, tg := range tableTriggers {
			if !slices.Contains(facts[t].triggers, tg) {
				missing = append(missing, namedTriggerObject(tg, t))
			}
		}
		if !facts[t].full {
			missing = append(missing, identityObject(t))
		}
	}
	var hasPub bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, schema.Publication).Scan(&hasPub); err != nil {
		return nil, nil, err
	}
	if !hasPub {
		return append(missing, objPublication), outdated, nil
	}
	rows, err = conn.Query(ctx, `SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 AND schemaname = 'public'`, schema.Publication)
	if err != nil {
		return nil, nil, err
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, err
	}
	for _, t := range schema.Tables {
		if !slices.Contains(published, t) {
			missing = append(missing, fmt.Sprintf("table public.%s in publication votr", t))
		}
	}
	return missing, outdated, nil
}

// functionsOutOfDate adds to missing the trigger functions the database
// lacks, and lists those whose body is not this votr's (a database set
// up by another version of votr, or edited by hand).
func functionsOutOfDate(ctx context.Context, conn *pgx.Conn, region int, missing []string) (_, outdated []string, err error) {
	fs := schema.Functions(region)
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.Name
	}
	rows, err := conn.Query(ctx, `
		SELECT p.prosrc FROM unnest($1::text[]) WITH ORDINALITY AS f(name, o)
		LEFT JOIN pg_proc p ON p.oid = to_regprocedure(f.name)
		ORDER BY f.o`, names)
	if err != nil {
		return nil, nil, err
	}
	bodies, err := pgx.CollectRows(rows, pgx.RowTo[*string])
	if err != nil {
		return nil, nil, err
	}
	for i, f := range fs {
		switch {
		case bodies[i] == nil:
			missing = append(missing, functionObject(f))
		case *bodies[i] != f.Body:
			outdated = append(outdated, functionObject(f))
		}
	}
	return missing, outdated, nil
}
