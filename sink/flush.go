package sink

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/schema"
)

// Flushing the target's WAL for the next hop. Groups commit asynchronously;
// a target that relays (a hub) is flushed as soon as its feed is idle.

// flushWAL makes the target flush its WAL past the group just committed
// (asynchronously, with its locks released at once). The next hop's
// walsender sends only flushed WAL: without this, a feed that has caught up
// would wait for the WAL writer (wal_writer_delay, 200 ms by default) at
// every hop.
func (a *applier) flushWAL(ctx context.Context) error {
	b := &pgconn.Batch{}
	queueFlush(b)
	if _, err := a.pg.ExecBatch(ctx, b).ReadAll(); err != nil {
		a.inTxn = false
		return fmt.Errorf("flush the target's WAL: %w", err)
	}
	return nil
}

// queueFlush adds to b the flush: flushSQL in a transaction of its own
// (flushResults results). Queued after a COMMIT, BEGIN also takes the
// statements between them into that transaction.
func queueFlush(b *pgconn.Batch) {
	b.ExecParams("BEGIN", nil, nil, nil, nil)
	b.ExecParams(flushSQL, nil, nil, nil, nil)
	b.ExecParams("COMMIT", nil, nil, nil, nil)
}

// flushResults is the number of results queueFlush adds to a batch.
const flushResults = 3

// flushSQL, run in a transaction of its own, flushes the target's WAL past
// everything committed before it. The transaction must write WAL: a
// transaction that wrote none commits asynchronously whatever
// synchronous_commit says, even when it has an id. A transactional logical
// message is the smallest such write; pgoutput passes messages on only to
// consumers that ask for them (votr's do not), so the transaction is empty
// to every feed. It commits with synchronous_commit = local: walsenders send
// what is flushed here, and waiting for a synchronous standby as well (on)
// would add its round trip to every flush, or hold the feed for as long as
// the standby is away. It holds no row locks: a group's own COMMIT never
// waits for the flush, because a transaction keeps its locks until its
// commit is flushed, and at a hub the other feeds queue on those rows.
const flushSQL = `SELECT set_config('synchronous_commit', 'local', true), pg_logical_emit_message(true, 'votr.flush', '')`

// relayCheck remembers whether the target relays what this feed applies:
// whether a logical slot on the target's database feeds a region other
// than this feed's source. Only then does a next hop wait for the target's
// WAL flush. A spoke relays nothing (its only feed goes back to the hub,
// which skips these transactions as echoes), so flushing there would only
// add WAL flushes, and every flush wakes every walsender of the server.
// Slots come and go as regions join and leave: it is looked up again now
// and then.
type relayCheck struct {
	at     time.Time
	relays bool
}

const relayCheckEvery = 5 * time.Second

// relays reports whether the target relays, looking it up at most every
// relayCheckEvery. Asked between groups, on the apply connection; if the
// look-up fails the target is taken to relay (a flush too many costs less
// than a next hop waiting for the WAL writer).
func (a *applier) relays(ctx context.Context) bool {
	if !a.relay.at.IsZero() && time.Since(a.relay.at) < relayCheckEvery {
		return a.relay.relays
	}
	a.relay.at = time.Now()
	reverse := schema.Slot(a.s.cfg.TargetDB, a.s.cfg.SourceID)
	err := a.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots
		WHERE database = current_database() AND slot_type = 'logical' AND slot_name <> $1)`, reverse).Scan(&a.relay.relays)
	if err != nil {
		a.relay.relays = true
	}
	return a.relay.relays
}
