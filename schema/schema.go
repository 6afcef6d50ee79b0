// Package schema is the database side of a votr region: the workload tables
// with the triggers that keep their vector clocks, votr's own bookkeeping
// tables, the candidate seed, and the names of the publication, replication
// slots and replication origins that join regions into feeds.
//
// Everything here is idempotent SQL: running it twice changes nothing.
package schema

import (
	"crypto/md5"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Tables are the replicated workload tables, in the order a target applies
// them (candidates before the rows that reference them).
var Tables = []string{"candidates", "ballots", "totals"}

// Publication is the name of the publication in every region database.
const Publication = "votr"

// SinkSetting is the session setting a sink sets to "on" so that the clock
// triggers leave its writes alone: a replicated row keeps the whence and src
// it was written with at its origin.
const SinkSetting = "votr.sink"

// Slot is the name of the replication slot, on the source's server, of the
// feed from the database srcDB to region dst. Slots are per server, so the
// name carries the source database to keep regions on one server apart.
func Slot(srcDB string, dst int) string { return fmt.Sprintf("%s_to_%d", srcDB, dst) }

// Origin is the replication origin, on the target's server, that tags the
// transactions a sink applies into dstDB from region src. A feed skips
// transactions tagged with the origin of its reverse feed: they are echoes.
func Origin(dstDB string, src int) string { return fmt.Sprintf("%s_from_%d", dstDB, src) }

// SharedSlot is the name of the replication slot that the feeds from the
// database srcDB share (sink.Fanout): one walsender decodes the source's
// WAL for all of them.
func SharedSlot(srcDB string) string { return srcDB + sharedSuffix }

const sharedSuffix = "_out"

// ParseSharedSlot is the inverse of SharedSlot; ok is false for any other
// name (a feed's slot included).
func ParseSharedSlot(name string) (srcDB string, ok bool) {
	db, found := strings.CutSuffix(name, sharedSuffix)
	if !found || db == "" {
		return "", false
	}
	return db, true
}

// ParseSlot is the inverse of Slot: the source database and target region
// of a slot votr named; ok is false for any other name.
func ParseSlot(name string) (srcDB string, dst int, ok bool) { return parseName(name, "_to_") }

// ParseOrigin is the inverse of Origin: the target database and source
// region of an origin votr named; ok is false for any other name.
func ParseOrigin(name string) (dstDB string, src int, ok bool) { return parseName(name, "_from_") }

// parseName splits "<db><sep><id>" at the last sep followed by digits only.
func parseName(name, sep string) (string, int, bool) {
	i := strings.LastIndex(name, sep)
	if i <= 0 {
		return "", 0, false
	}
	digits := name[i+len(sep):]
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return "", 0, false
	}
	id, err := strconv.Atoi(digits)
	if err != nil {
		return "", 0, false
	}
	return name[:i], id, true
}

// FeedName is the key of a feed in votr.checkpoints: "1:0" is spoke 1 → hub.
func FeedName(src, dst int) string { return fmt.Sprintf("%d:%d", src, dst) }

// Objects are the schema objects Create makes, by kind, as plan and check
// inspect them.
var Objects = []string{
	"table public.candidates", "table public.ballots", "table public.totals",
	"table votr.checkpoints", "table votr.dead_letters", "table votr.region",
	"table votr.tombstones", "table votr.slot_members",
}

// Create returns the statements that build the schema of region id. They are
// safe to run again on a database that already has it.
func Create(region int) []string {
	r := fmt.Sprint(region)
	return []string{
		`CREATE SCHEMA IF NOT EXISTS votr`,
		// votr.region records which region this database is, so that a
		// database that is not votr's (or is another region's) is recognised.
		`CREATE TABLE IF NOT EXISTS votr.region (id INT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
		`INSERT INTO votr.region (id) VALUES (` + r + `) ON CONFLICT DO NOTHING`,
		`CREATE TABLE IF NOT EXISTS public.candidates (
			candidate UUID PRIMARY KEY,
			name TEXT NOT NULL,
			mood TEXT NOT NULL,
			version INT NOT NULL DEFAULT 1,
			whence JSONB NOT NULL DEFAULT '{}',
			src INT NOT NULL DEFAULT ` + r + `)`,
		`CREATE TABLE IF NOT EXISTS public.ballots (
			candidate UUID NOT NULL REFERENCES public.candidates ON DELETE CASCADE,
			ballot UUID NOT NULL DEFAULT gen_random_uuid(),
			whence JSONB NOT NULL DEFAULT '{}',
			src INT NOT NULL DEFAULT ` + r + `,
			PRIMARY KEY (candidate, ballot))`,
		`CREATE TABLE IF NOT EXISTS public.totals (
			candidate UUID PRIMARY KEY REFERENCES public.candidates ON DELETE CASCADE,
			total BIGINT NOT NULL DEFAULT 0,
			whence JSONB NOT NULL DEFAULT '{}',
			src INT NOT NULL DEFAULT ` + r + `)`,
		// Updates and deletes must carry the whole old row: the sink's fast
		// path compares it with the target row, and merges see it as "before".
		`ALTER TABLE public.candidates REPLICA IDENTITY FULL`,
		`ALTER TABLE public.ballots REPLICA IDENTITY FULL`,
		`ALTER TABLE public.totals REPLICA IDENTITY FULL`,
		stampFunction(region).create(),
		trigger("candidates"), trigger("ballots"), trigger("totals"),
		`CREATE TABLE IF NOT EXISTS votr.checkpoints (
			feed TEXT PRIMARY KEY,
			source_lsn PG_LSN NOT NULL DEFAULT '0/0',
			source_commit TIMESTAMPTZ,
			applied_at TIMESTAMPTZ,
			txns BIGINT NOT NULL DEFAULT 0,
			rows BIGINT NOT NULL DEFAULT 0,
			conflicts BIGINT NOT NULL DEFAULT 0,
			dropped BIGINT NOT NULL DEFAULT 0,
			dead_lettered BIGINT NOT NULL DEFAULT 0)`,
		// votr.slot_members: in a source database, the feeds from it that
		// read a shared slot (sink.Fanout) instead of a slot of their own
		// (sink/members.go holds every statement on it).
		`CREATE TABLE IF NOT EXISTS votr.slot_members (
			feed TEXT PRIMARY KEY,
			slot TEXT NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS votr.dead_letters (
			id BIGSERIAL PRIMARY KEY,
			feed TEXT NOT NULL,
			source_lsn PG_LSN NOT NULL,
			source_commit TIMESTAMPTZ,
			tbl TEXT NOT NULL,
			op TEXT NOT NULL,
			before JSONB,
			proposed JSONB,
			target JSONB,
			reason TEXT NOT NULL,
			created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
			replayed_at TIMESTAMPTZ)`,
		// votr.tombstones: one row per deleted key, written by the sinks in
		// the transaction that applies the delete, so a late write of a
		// deleted row meets the delete's image in the merge (sink/tombstone.go
		// holds every statement on it). key is the key columns' text forms
		// in table order; image the deleted row, column → text form.
		`CREATE TABLE IF NOT EXISTS votr.tombstones (
			tbl TEXT NOT NULL,
			key JSONB NOT NULL,
			image JSONB NOT NULL,
			deleted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
			PRIMARY KEY (tbl, key))`,
		`CREATE INDEX IF NOT EXISTS tombstones_deleted_at ON votr.tombstones (deleted_at)`,
		tombstoneFunction.create(),
		tombstoneTrigger("candidates", "candidate"), tombstoneTrigger("ballots", "candidate", "ballot"),
		tombstoneTrigger("totals", "candidate"),
		`DO $$ BEGIN
			IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = '` + Publication + `') THEN
				CREATE PUBLICATION ` + Publication + ` FOR TABLE public.candidates, public.ballots, public.totals;
			END IF;
		END $$`,
	}
}

// Function is a trigger function votr keeps in each region's database.
type Function struct {
	Name string // its signature as to_regprocedure reads it: votr.stamp()
	Body string // its PL/pgSQL source, as pg_proc.prosrc holds it
}

func (f Function) create() string {
	return `CREATE OR REPLACE FUNCTION ` + f.Name + ` RETURNS trigger LANGUAGE plpgsql AS $fn$` + f.Body + `$fn$`
}

// Functions are the trigger functions of region's database. A database
// set up by an older votr may hold other bodies under these names: apply
// replaces them (Create's CREATE OR REPLACE), since the sinks rely on what
// this votr's triggers do.
func Functions(region int) []Function {
	return []Function{stampFunction(region), tombstoneFunction}
}

// stampFunction is the trigger function that keeps whence and src on local
// writes, so any SQL client's plain INSERT or UPDATE is replicated correctly.
//
// Clocks, per table:
//   - candidates, ballots: whence = {"<region>": n}, n counting that
//     region's writes to the row; src = the writing region.
//   - totals: whence = {"<region>": {"c": n, "n": contribution}}: the total is
//     the sum of the regions' contributions, and c orders one region's
//     successive contributions, so merges take each region's newest entry.
//
// A sink sets votr.sink = on: its writes keep the clock of the origin.
func stampFunction(region int) Function {
	r := fmt.Sprint(region)
	return Function{Name: "votr.stamp()", Body: `
DECLARE
	me TEXT := '` + r + `';
	mine JSONB;
	tomb JSONB;
	w JSONB;
BEGIN
	IF current_setting('` + SinkSetting + `', true) = 'on' THEN
		RETURN NEW;
	END IF;
	NEW.src := ` + r + `;
	IF TG_OP = 'INSERT' THEN
		-- A key deleted before (its tombstone is still here): the new row
		-- continues the deleted one's clock, so it is later than the delete
		-- everywhere (else other regions would drop it as a write the
		-- delete had seen), and a candidate's version passes the deleted one.
		-- The key is built only when the table has a tombstone at all:
		-- building it (the whole row as JSON) and looking it up was half the
		-- cost of a worker's inserts, in a workload that never deletes.
		IF EXISTS (SELECT 1 FROM votr.tombstones b WHERE b.tbl = TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME) THEN
			SELECT b.image INTO tomb FROM votr.tombstones b
			WHERE b.tbl = TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
			  AND b.key = CASE TG_TABLE_NAME WHEN 'ballots' THEN jsonb_build_array(NEW.candidate::text, to_jsonb(NEW) ->> 'ballot')
			                                 ELSE jsonb_build_array(NEW.candidate::text) END;
		END IF;
		IF tomb IS NOT NULL THEN
			w := COALESCE((tomb ->> 'whence')::jsonb, '{}');
			IF TG_TABLE_NAME = 'totals' THEN
				mine := COALESCE(w -> me, '{"c": 0, "n": 0}');
				NEW.whence := w || jsonb_build_object(me, jsonb_build_object(
					'c', (mine ->> 'c')::bigint + 1,
					'n', (to_jsonb(NEW) ->> 'total')::bigint - COALESCE((SELECT sum((e.value ->> 'n')::bigint) FROM jsonb_each(w) e WHERE e.key <> me), 0)));
			ELSE
				NEW.whence := w || jsonb_build_object(me, COALESCE((w ->> me)::bigint, 0) + 1);
			END IF;
			IF TG_TABLE_NAME = 'candidates' THEN
				NEW := jsonb_populate_record(NEW, jsonb_build_object('version',
					GREATEST((to_jsonb(NEW) ->> 'version')::bigint, COALESCE((tomb ->> 'version')::bigint, 0) + 1)));
			END IF;
			RETURN NEW;
		END IF;
	END IF;
	IF TG_TABLE_NAME = 'totals' THEN
		IF TG_OP = 'INSERT' THEN
			NEW.whence := jsonb_build_object(me, jsonb_build_object('c', 1, 'n', NEW.total));
		ELSE
			mine := COALESCE(OLD.whence -> me, '{"c": 0, "n": 0}');
			NEW.whence := OLD.whence || jsonb_build_object(me, jsonb_build_object(
				'c', (mine ->> 'c')::bigint + 1,
				'n', (mine ->> 'n')::bigint + (NEW.total - OLD.total)));
		END IF;
	ELSIF TG_OP = 'INSERT' THEN
		NEW.whence := jsonb_build_object(me, 1);
	ELSE
		NEW.whence := OLD.whence || jsonb_build_object(me, COALESCE((OLD.whence ->> me)::bigint, 0) + 1);
	END IF;
	RETURN NEW;
END
`}
}

func trigger(table string) string {
	return `DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'votr_stamp' AND tgrelid = 'public.` + table + `'::regclass) THEN
			CREATE TRIGGER votr_stamp BEFORE INSERT OR UPDATE ON public.` + table + `
				FOR EACH ROW EXECUTE FUNCTION votr.stamp();
		END IF;
	END $$`
}

// tombstoneFunction records a local delete (one by any SQL client, not a
// sink's: sinks write their own), or the old key of a local update that
// moved a row's primary key, as the key's tombstone, so a late write of
// the row the region deleted is merged against it here as in every other
// region. The key is the text forms of the key columns named by the
// trigger's arguments; the image is column → text form. A tombstone already
// there is joined, not replaced: the image is the deleted row with the two
// clocks' join in whence (entry by entry the larger; for totals the entry
// with the larger c, then n, and total their sum), so what the older delete
// removed stays removed (votr.ts's join of a tombstone with the row it
// deleted is that row when its clock covers the tombstone's, as a row
// written here after the delete does: stamp continues the tombstone's
// clock).
var tombstoneFunction = Function{Name: "votr.tombstone()", Body: `
DECLARE
	r JSONB := to_jsonb(OLD);
	k JSONB;
	img JSONB;
	prev JSONB;
	w JSONB;
	pw JSONB;
BEGIN
	IF current_setting('` + SinkSetting + `', true) = 'on' THEN
		RETURN NULL;
	END IF;
	SELECT jsonb_agg(r ->> a ORDER BY o) INTO k FROM unnest(TG_ARGV) WITH ORDINALITY AS x(a, o);
	SELECT b.image INTO prev FROM votr.tombstones b WHERE b.tbl = TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME AND b.key = k FOR UPDATE;
	IF prev IS NOT NULL AND r ? 'whence' THEN
		w := COALESCE(r -> 'whence', '{}');
		pw := COALESCE((prev ->> 'whence')::jsonb, '{}');
		IF TG_TABLE_NAME = 'totals' THEN
			SELECT COALESCE(jsonb_object_agg(x.key, x.value), '{}') INTO w FROM (
				SELECT DISTINCT ON (e.key) e.key, e.value FROM (
					SELECT key, value FROM jsonb_each(w) UNION ALL SELECT key, value FROM jsonb_each(pw)) e
				ORDER BY e.key, (e.value ->> 'c')::bigint DESC, (e.value ->> 'n')::bigint DESC) x;
			r := r || jsonb_build_object('whence', w,
				'total', (SELECT COALESCE(sum((e.value ->> 'n')::bigint), 0) FROM jsonb_each(w) e));
		ELSE
			SELECT COALESCE(jsonb_object_agg(x.key, x.m), '{}') INTO w FROM (
				SELECT e.key, max(e.value::bigint) AS m FROM (
					SELECT key, value FROM jsonb_each_text(w) UNION ALL SELECT key, value FROM jsonb_each_text(pw)) e
				GROUP BY e.key) x;
			r := r || jsonb_build_object('whence', w);
		END IF;
	END IF;
	-- Text forms, as the sinks write them (whence as its JSON text).
	SELECT jsonb_object_agg(e.key, e.value) INTO img FROM jsonb_each_text(r) e;
	INSERT INTO votr.tombstones AS b (tbl, key, image) VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, k, img)
	ON CONFLICT (tbl, key) DO UPDATE SET image = EXCLUDED.image, deleted_at = now();
	RETURN NULL;
END
`}

// tombstoneTrigger records local deletes of table, and local updates that
// change its key (the old key is deleted as far as other regions can tell).
func tombstoneTrigger(table string, keys ...string) string {
	args := make([]string, len(keys))
	var moved []string
	for i, k := range keys {
		args[i] = QuoteLiteral(k)
		moved = append(moved, "OLD."+k+" IS DISTINCT FROM NEW."+k)
	}
	return `DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'votr_tombstone' AND tgrelid = 'public.` + table + `'::regclass) THEN
			CREATE TRIGGER votr_tombstone AFTER DELETE ON public.` + table + `
				FOR EACH ROW EXECUTE FUNCTION votr.tombstone(` + strings.Join(args, ", ") + `);
		END IF;
		IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'votr_tombstone_move' AND tgrelid = 'public.` + table + `'::regclass) THEN
			CREATE TRIGGER votr_tombstone_move AFTER UPDATE ON public.` + table + `
				FOR EACH ROW WHEN (` + strings.Join(moved, " OR ") + `) EXECUTE FUNCTION votr.tombstone(` + strings.Join(args, ", ") + `);
		END IF;
	END $$`
}

// Candidate is one seeded candidate. Every region seeds the same ids, names
// and moods, so seeding never conflicts.
type Candidate struct {
	ID, Name, Mood string
}

var (
	firstNames = []string{"Ada", "Basil", "Clio", "Dmitri", "Edith", "Farouk", "Greta", "Hugo", "Ines", "Jasper",
		"Kiri", "Lorcan", "Mabel", "Nils", "Odile", "Piet", "Quinn", "Rosa", "Soren", "Tamsin", "Ugo", "Vera",
		"Wim", "Xenia", "Yusuf", "Zora"}
	epithets = []string{"Bold", "Cautious", "Diligent", "Earnest", "Frugal", "Gallant", "Humble", "Idle", "Jolly",
		"Keen", "Lucky", "Mild", "Nimble", "Odd", "Patient", "Quiet", "Restless", "Steady", "Tireless", "Upright",
		"Valiant", "Wary", "Young", "Zealous", "Amiable", "Brisk"}
	moods = []string{"hopeful", "confident", "anxious", "cheerful", "defiant", "weary", "serene", "restless",
		"jubilant", "stoic", "gloomy", "elated", "pensive", "determined", "bashful", "smug", "wistful", "nervous",
		"proud", "content", "grumpy", "curious", "sanguine"}
)

// Candidates returns the n candidates every region is seeded with.
func Candidates(n int) []Candidate {
	out := make([]Candidate, n)
	for i := range out {
		sum := md5.Sum([]byte(fmt.Sprintf("votr-candidate-%d", i)))
		id := fmt.Sprintf("%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
		article := "the"
		if i%2 == 1 {
			article = "le"
		}
		out[i] = Candidate{
			ID:   id,
			Name: fmt.Sprintf("%s %s %s (%d)", firstNames[i%len(firstNames)], article, epithets[(i/len(firstNames))%len(epithets)], i),
			Mood: moods[i%len(moods)],
		}
	}
	return out
}

// Seed inserts the candidates and a zero total for each, as a sink would
// (votr.sink = on), so the seed carries no region's clock and is identical
// everywhere. Rows already there are left alone.
func Seed(candidates int) *pgx.Batch {
	cs := Candidates(candidates)
	ids := make([]string, len(cs))
	names := make([]string, len(cs))
	ms := make([]string, len(cs))
	for i, c := range cs {
		ids[i], names[i], ms[i] = c.ID, c.Name, c.Mood
	}
	b := &pgx.Batch{}
	b.Queue(`SELECT set_config('` + SinkSetting + `', 'on', true)`)
	b.Queue(`INSERT INTO public.candidates (candidate, name, mood, version, whence, src)
		SELECT id, name, mood, 1, '{}', 0 FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, name, mood)
		ON CONFLICT (candidate) DO NOTHING`, ids, names, ms)
	b.Queue(`INSERT INTO public.totals (candidate, total, whence, src)
		SELECT id, 0, '{}', 0 FROM unnest($1::uuid[]) AS u(id)
		ON CONFLICT (candidate) DO NOTHING`, ids)
	return b
}

// QuoteIdent quotes an identifier for SQL. Names from a topology are also
// validated (see config), so this is a second line of defence.
func QuoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

// QuoteLiteral quotes a string literal for statements that take no parameters
// (CREATE DATABASE, replication commands).
func QuoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
