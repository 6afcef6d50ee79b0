package faults_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/schema"
)

// ledger is what the plain SQL clients did, as they know it: a commit that
// returned OK is certain; one whose COMMIT failed (the server went away in
// the middle) may or may not have happened.
type ledger struct {
	mu       sync.Mutex
	inserted map[string]bool // "candidate/ballot" → certain
	deleted  map[string]bool
	ops      map[string]int // per outcome, for the log
	sqlState map[string]int // errors by SQLSTATE (or kind)
}

func (l *ledger) note(what string) {
	l.mu.Lock()
	l.ops[what]++
	l.mu.Unlock()
}

// nemesisClients are the plain SQL clients, one per region.
type nemesisClients struct {
	t      *testing.T
	ctx    context.Context
	seed   uint64
	ledger *ledger
	mu     sync.Mutex
	stops  map[int]context.CancelFunc
	wg     sync.WaitGroup
	done   map[int]chan struct{}
}

func newNemesisClients(ctx context.Context, t *testing.T, seed uint64) *nemesisClients {
	return &nemesisClients{t: t, ctx: ctx, seed: seed, stops: map[int]context.CancelFunc{}, done: map[int]chan struct{}{},
		ledger: &ledger{inserted: map[string]bool{}, deleted: map[string]bool{}, ops: map[string]int{}, sqlState: map[string]int{}}}
}

// start runs region id's client on dsn; throws: it also makes the cursed
// candidate's "throw-" writes.
func (c *nemesisClients) start(id int, dsn string, throws bool) {
	ctx, cancel := context.WithCancel(c.ctx)
	done := make(chan struct{})
	c.mu.Lock()
	c.stops[id], c.done[id] = cancel, done
	c.mu.Unlock()
	cl := &sqlClient{id: id, dsn: dsn, throws: throws, ledger: c.ledger,
		rng: rand.New(rand.NewPCG(c.seed, uint64(id)+1)), cands: schema.Candidates(nemesisCandidates)}
	c.wg.Go(func() {
		defer close(done)
		cl.run(ctx)
	})
}

// stop stops region id's client and waits for it.
func (c *nemesisClients) stop(id int) {
	c.mu.Lock()
	cancel, done := c.stops[id], c.done[id]
	c.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (c *nemesisClients) stopAll() {
	c.mu.Lock()
	for _, cancel := range c.stops {
		cancel()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

func (c *nemesisClients) summary() string {
	l := c.ledger
	l.mu.Lock()
	defer l.mu.Unlock()
	var parts []string
	for k, v := range l.ops {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	for k, v := range l.sqlState {
		parts = append(parts, fmt.Sprintf("error %s %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// sqlClient is one region's client: pgx and SQL only, like any application
// writing to a region beside votr.
type sqlClient struct {
	id     int
	dsn    string
	throws bool
	ledger *ledger
	rng    *rand.Rand
	cands  []schema.Candidate
	seq    int
}

func (cl *sqlClient) run(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			c, err := pgx.Connect(cctx, cl.dsn)
			cancel()
			if err != nil {
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
			conn = c
		}
		// The operation is chosen before it runs, so that the sequence of
		// choices follows the seed whatever fails.
		// Throwing writes are rare: until a failing merge is retried
		// alone (issue 14, point 6), each costs its feed a reconnect.
		op := cl.rng.IntN(1000)
		var err error
		switch {
		case op < 600:
			err = cl.insert(ctx, conn)
		case op < 750:
			err = cl.update(ctx, conn)
		case op < 755 && cl.throws:
			err = cl.throw(ctx, conn)
		case op >= 850 && nemesisDeletes:
			err = cl.delete(ctx, conn)
		}
		if err != nil && ctx.Err() == nil {
			cl.ledger.mu.Lock()
			var pe *pgconn.PgError
			if errors.As(err, &pe) {
				cl.ledger.sqlState[pe.Code]++
			} else {
				cl.ledger.sqlState["connection"]++
			}
			cl.ledger.mu.Unlock()
			conn.Close(context.Background())
			conn = nil
		}
		sleepCtx(ctx, time.Duration(20+cl.rng.IntN(60))*time.Millisecond)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// uuid is a random (version 4) UUID from the client's generator.
func (cl *sqlClient) uuid() string {
	var b [16]byte
	for i := range b {
		b[i] = byte(cl.rng.UintN(256))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// commit commits tx and records keys in set: certain when COMMIT answered,
// uncertain when it failed (the transaction may have committed).
func (cl *sqlClient) commit(ctx context.Context, tx pgx.Tx, set func(*ledger) map[string]bool, keys []string, what string) error {
	err := tx.Commit(ctx)
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// The server answered: it did not commit.
		return err
	}
	cl.ledger.mu.Lock()
	m := set(cl.ledger)
	for _, k := range keys {
		if !m[k] {
			m[k] = err == nil
		}
	}
	if err == nil {
		cl.ledger.ops[what]++
	} else {
		cl.ledger.ops[what+" (outcome unknown)"]++
	}
	cl.ledger.mu.Unlock()
	return err
}

// insert casts 1–3 ballots for one candidate and adds them to its total,
// in one transaction, as the workers do.
func (cl *sqlClient) insert(ctx context.Context, conn *pgx.Conn) error {
	c := cl.cands[cl.rng.IntN(len(cl.cands))].ID
	k := 1 + cl.rng.IntN(3)
	ids := make([]string, k)
	keys := make([]string, k)
	for i := range ids {
		ids[i] = cl.uuid()
		keys[i] = c + "/" + ids[i]
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `UPDATE totals SET total = total + $1 WHERE candidate = $2`, k, c); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO ballots (candidate, ballot) SELECT $1, unnest($2::uuid[])`, c, ids); err != nil {
		return err
	}
	return cl.commit(ctx, tx, func(l *ledger) map[string]bool { return l.inserted }, keys, "insert")
}

// update changes a candidate other than the cursed one.
func (cl *sqlClient) update(ctx context.Context, conn *pgx.Conn) error {
	c := cl.cands[1+cl.rng.IntN(len(cl.cands)-1)].ID
	cl.seq++
	_, err := conn.Exec(ctx, `UPDATE candidates SET mood = $1, version = version + 1 WHERE candidate = $2`,
		fmt.Sprintf("calm-%d-%d", cl.id, cl.seq), c)
	if err == nil {
		cl.ledger.note("update")
	}
	return err
}

// throw gives the cursed candidate a "throw-" mood: wherever this change
// conflicts, the test script's merge throws.
func (cl *sqlClient) throw(ctx context.Context, conn *pgx.Conn) error {
	cl.seq++
	_, err := conn.Exec(ctx, `UPDATE candidates SET mood = $1, version = version + 1 WHERE candidate = $2`,
		fmt.Sprintf("throw-%d-%d", cl.id, cl.seq), cl.cands[0].ID)
	if err == nil {
		cl.ledger.note("throw")
	}
	return err
}

// delete removes one of this region's own ballots (a worker's or a
// client's) and takes it off its total. Only the region that cast a ballot
// deletes it: two regions deleting one ballot at once would each take it
// off the total, which no merge can tell from two deletes.
func (cl *sqlClient) delete(ctx context.Context, conn *pgx.Conn) error {
	c := cl.cands[cl.rng.IntN(len(cl.cands))].ID
	pivot := cl.uuid()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	var ballot string
	err = tx.QueryRow(ctx, `DELETE FROM ballots WHERE (candidate, ballot) = (
			SELECT candidate, ballot FROM ballots WHERE candidate = $1 AND ballot >= $2 AND src = $3 ORDER BY ballot LIMIT 1 FOR UPDATE SKIP LOCKED)
		RETURNING ballot::text`, c, pivot, cl.id).Scan(&ballot)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE totals SET total = total - 1 WHERE candidate = $1`, c); err != nil {
		return err
	}
	return cl.commit(ctx, tx, func(l *ledger) map[string]bool { return l.deleted }, []string{c + "/" + ballot}, "delete")
}
