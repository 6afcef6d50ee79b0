// Package sink runs one feed: it streams a source region's replication slot
// (pgoutput) and applies every source transaction exactly once to the target
// region, merging conflicting rows with the user script.
//
// A feed is a pipeline; each stage is a file:
//
//  1. stream.go: the replication connection. It checks the slot, starts
//     the stream from the feed's checkpoint and reads the socket itself
//     (in larger pieces while the feed is far behind).
//  2. decode.go: pgoutput messages become segments (segment.go): whole
//     source transactions, or chunks of a large one, with their rows in
//     text form. Transactions already applied, and echoes of the reverse
//     feed (tagged with its replication origin), are skipped here.
//  3. queue.go: segments wait, bounded in rows and bytes, for the applier.
//  4. batch.go: the applier takes whatever is ready as one group (up to
//     BatchTxns transactions, BatchRows rows, BatchBytes bytes; a group of
//     a few transactions waits a moment for more when the feed is far
//     behind, or when it is caught up but its source commits faster than
//     one transaction per wait: 20 ms, or up to 80 ms for groups up to a
//     quarter of BatchTxns where groups are slow to apply) and applies
//     the group in one target transaction, retrying it after a deadlock or
//     lock timeout (connect.go: apply sessions check for a lock cycle after
//     100 ms and give a wait up after half of deadlock_timeout, so that in
//     a cycle with a user's transaction the sink's is the one aborted, but
//     for a narrow window connect.go describes). A change
//     that fails (a merge, a constraint of the target) is retried alone
//     under a savepoint, then parked or stops the feed (retry.go).
//  5. fold.go: within a group, the changes to one row fold into one net
//     change (first before-image, last after-image).
//  6. write.go: new rows go out as bulk inserts; in the same round trip the
//     target rows of updates and deletes are locked (each table's rows in
//     key order, tables children first: the one lock order of every sink)
//     and then read, one snapshot per table (while catching up, written at
//     once after that lock). Rows that still match the old image take the
//     new one; the others (and inserts that met a row) are conflicts. A
//     group is written by one such round trip unless it must not be (a
//     chunk of a large transaction, a key change, a table described anew
//     with other columns: decode.go keeps a description re-sent unchanged),
//     and updates never assign key columns (catalog.go keepKey), which
//     would lock a row against foreign key checks.
//  7. merge.go and settle.go: conflicts are merged by the script (or the
//     table's built-in rule); then every write lands compare-and-set on
//     the row version read. Writes to the rows locked before the read
//     cannot miss: when they are all the group has left, the same round
//     trip commits (a caught-up group of updates takes two round trips,
//     with its hot rows locked across one wait for the sink process). A
//     merge result at another key, a tombstone, or a row an insert met
//     was not locked: such writes lock their rows in key order first, and
//     a row that changed meanwhile, or a key someone inserted first, is
//     read and merged again, never overwritten (Status.Rewrites). Changes
//     whose merge gives up are parked in votr.dead_letters (deadletter.go).
//  8. checkpoint.go: the group commits with the feed's row in
//     votr.checkpoints, tagged with the feed's replication origin. The row
//     moves only forward from where the session read it (after taking the
//     origin) or last wrote it, else the group rolls back; only apply
//     (its backfill, or a feed with nothing to copy) creates the row, and
//     a sink refuses a feed without one.
//  9. confirm.go: the source position is confirmed to the slot only once
//     the target has flushed the commit that recorded it, so the target
//     commits asynchronously without risking what the slot lets go of;
//     where the target relays (a hub: a slot on it feeds another region)
//     the round trip of a group that empties the queue also flushes the
//     WAL (after the group's commit has released its locks), and an idle
//     feed flushes, so the next hop does not wait for the WAL writer
//     (flush.go).
//
// Several feeds of one source may read one slot (fanout.go, Fanout): a
// session then opens each feed's target side, starts the stream where the
// feed furthest behind resumes, hands every message to each feed's own
// decoder (decode.go fanOut; each skips what its feed has applied and its
// own echoes), and confirms the slot at the least position every feed may
// confirm (confirm.go). A failure of any of them restarts them all.
//
// Around the pipeline: sink.go is the feed's configuration and status,
// run.go runs sessions of the pipeline (for one feed, or a Fanout's) and
// decides which errors end the feeds, connect.go opens target connections with the settings that give
// values one text form on both sides (and holds the apply session's plan
// modes: index probes planned once while the feed is caught up, the
// server's own plans while it is far behind), catalog.go describes target tables
// and builds their statements, values.go converts values for scripts, and
// metrics.go exports the feed's counters. backfill.go (a new feed's
// initial copy) and replay.go (re-applying dead letters) are other ways
// into the same fold, write, merge and commit stages. tombstone.go is the
// tombstone store (votr.tombstones): the settle reads carry each key's
// tombstone, deletes record the deleted image (compare-and-set on the
// tombstone's xmin, like rows), writes of a deleted key meet it in the
// merge as op.deleted, key-moving updates are merged so the old key keeps
// one, and the sink collects the tombstones every inbound feed has passed
// between groups (CollectTombstones); toast.go applies updates
// whose unchanged TOASTed values no old row fills in. checkpoint.go and
// deadletter.go hold every statement on votr.checkpoints and
// votr.dead_letters, for the runner and the report as well.
package sink
