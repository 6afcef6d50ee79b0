package sink

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// SlotMembers is the votr.slot_members table of a source database: the
// feeds from it that read a shared slot (Fanout) rather than a slot of
// their own. Every query on the table is in this file (schema creates it).
//
// A feed becomes a member when it is handed to the shared slot, before its
// own slot is dropped, and stops being one when it is detached, after its
// own slot is made, or when a slot of its own is created for it. So a feed
// that has neither its own slot nor a row here has lost its slot (dropped
// by hand, say): the shared slot may have passed what it applied, and it
// must be copied afresh (plan re-syncs it).
type SlotMembers struct{ db DB }

// SlotMembersIn is the member table of the database db is connected to.
func SlotMembersIn(db DB) SlotMembers { return SlotMembers{db} }

// All maps each member feed to the shared slot it reads.
func (m SlotMembers) All(ctx context.Context) (map[string]string, error) {
	rows, err := m.db.Query(ctx, `SELECT feed, slot FROM votr.slot_members`)
	if err != nil {
		return nil, fmt.Errorf("read the shared slots' members: %w", err)
	}
	out := map[string]string{}
	var feed, slot string
	if _, err := pgx.ForEachRow(rows, []any{&feed, &slot}, func() error {
		out[feed] = slot
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read the shared slots' members: %w", err)
	}
	return out, nil
}

// Join records that feed reads slot from now on.
func (m SlotMembers) Join(ctx context.Context, feed, slot string) error {
	if _, err := m.db.Exec(ctx, `INSERT INTO votr.slot_members (feed, slot) VALUES ($1, $2)
		ON CONFLICT (feed) DO UPDATE SET slot = EXCLUDED.slot`, feed, slot); err != nil {
		return fmt.Errorf("record feed %s as reading slot %s: %w", feed, slot, err)
	}
	return nil
}

// Leave records that feed reads no shared slot.
func (m SlotMembers) Leave(ctx context.Context, feed string) error {
	if _, err := m.db.Exec(ctx, `DELETE FROM votr.slot_members WHERE feed = $1`, feed); err != nil {
		return fmt.Errorf("record feed %s as reading no shared slot: %w", feed, err)
	}
	return nil
}
