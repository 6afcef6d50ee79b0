package report

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/schema"
)

const (
	// unappliedCap bounds the changes decoded to count a feed's lag, so a
	// report on a feed far behind stays quick; the count is then "at least".
	unappliedCap = 1_000_000
	// peekTimeout bounds the decoding; past it the lag is unknown.
	peekTimeout = 20 * time.Second
	// idleWait is how long a slot released a moment ago (a sink that just
	// stopped; its walsender exits) may still show as in use.
	idleWait = 2 * time.Second
)

// unapplied counts the transactions the feed's sink would still apply: it
// decodes the slot's pending stream without consuming it
// (pg_logical_slot_peek_binary_changes, through the same publication as the
// sink) and counts the transactions that change a published table, commit
// after the target's checkpoint and do not carry the reverse feed's origin
// (the sink skips those as echoes). Only a slot no one streams can be read
// this way: -1 when the slot stays in use, or on any error.
func unapplied(ctx context.Context, conn *pgx.Conn, t FeedTarget, fr *FeedReport) (int64, bool) {
	var applied pglogrepl.LSN
	if fr.Checkpoint != nil {
		lsn, err := pglogrepl.ParseLSN(fr.Checkpoint.SourceLSN)
		if err != nil {
			return -1, false
		}
		applied = lsn
	}
	// The reverse feed's origin, in the source database the slot is in.
	echo := ""
	db, dst, ok := schema.ParseSlot(t.Slot)
	if !ok {
		db, ok = schema.ParseSharedSlot(t.Slot)
		dst = t.TargetID
	}
	if ok && dst == t.TargetID {
		echo = schema.Origin(db, t.TargetID)
	}
	deadline := time.Now().Add(idleWait)
	for fr.SlotActive {
		if time.Now().After(deadline) {
			return -1, false
		}
		select {
		case <-ctx.Done():
			return -1, false
		case <-time.After(200 * time.Millisecond):
		}
		if err := conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, t.Slot).Scan(&fr.SlotActive); err != nil {
			return -1, false
		}
	}
	pctx, cancel := context.WithTimeout(ctx, peekTimeout)
	defer cancel()
	// Only what the count needs leaves the server: the message type, and
	// the final LSN of a BEGIN or the name of an ORIGIN.
	rows, err := conn.Query(pctx, `SELECT get_byte(data, 0),
			CASE get_byte(data, 0) WHEN 66 THEN substr(data, 2, 8) WHEN 79 THEN substr(data, 10) END
		FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, 'proto_version', '1', 'publication_names', $3)`,
		t.Slot, unappliedCap, schema.Publication)
	if err != nil {
		return -1, false
	}
	var (
		n, seen        int64
		typ            int32
		arg            []byte
		after, echoed  bool
		changed, inTxn bool
	)
	_, err = pgx.ForEachRow(rows, []any{&typ, &arg}, func() error {
		seen++
		switch typ {
		case 'B':
			if len(arg) != 8 {
				return errors.New("short BEGIN message")
			}
			inTxn, echoed, changed = true, false, false
			after = pglogrepl.LSN(binary.BigEndian.Uint64(arg)) > applied
		case 'O':
			// The name is NUL-terminated.
			if len(arg) > 0 && arg[len(arg)-1] == 0 {
				arg = arg[:len(arg)-1]
			}
			echoed = echo != "" && string(arg) == echo
		case 'I', 'U', 'D', 'T':
			changed = true
		case 'C':
			if inTxn && after && changed && !echoed {
				n++
			}
			inTxn = false
		}
		return nil
	})
	if err != nil {
		return -1, false
	}
	return n, seen >= unappliedCap
}

// lagText is the LAG column: the transactions the feed has not applied.
func lagText(f FeedReport) string {
	switch {
	case f.UnappliedTxns < 0 && f.SlotActive:
		return "streaming"
	case f.UnappliedTxns < 0:
		return "-"
	case f.UnappliedCapped:
		return fmt.Sprintf("≥%d txns", f.UnappliedTxns)
	case f.UnappliedTxns == 1:
		return "1 txn"
	}
	return fmt.Sprintf("%d txns", f.UnappliedTxns)
}
