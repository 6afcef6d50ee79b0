package plan

import (
	"fmt"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
)

// KindDrain is the feed of a spoke that left the topology into the hub,
// brought up to the spoke's WAL end before its slot and checkpoint go.
const KindDrain = "drain"

// drains are the actions that bring what former spokes committed to the
// hub before removals drop their feeds, and the feeds that cannot be
// drained (their spoke's server is not in the topology, or their slot was
// invalidated): removing them would lose what the hub does not have yet.
//
// A former spoke's feed into the hub still needs draining while the hub
// holds its checkpoint and the spoke's slot exists. That is the case after
// an online removal was interrupted (apply killed while the spoke left) and
// when a spoke leaves the topology between two applies. Once the slot is
// gone, the feed was drained first (the slot is dropped only after it).
func drains(t *config.Topology, obs *State) (actions []Action, undrained []Undrained) {
	hub := obs.Region(t.Hub.ID)
	if hub == nil {
		return nil, nil
	}
	inspected := map[int]*Region{}
	for _, rs := range obs.Former {
		inspected[rs.ID] = rs
	}
	for _, feed := range sortedKeys(hub.Checkpoints) {
		var src, dst int
		if _, err := fmt.Sscanf(feed, "%d:%d", &src, &dst); err != nil || dst != t.Hub.ID {
			continue
		}
		if _, ok := t.Region(src); ok {
			continue
		}
		rs := inspected[src]
		if rs == nil {
			undrained = append(undrained, Undrained{Feed: feed, Reason: fmt.Sprintf("region %d left the topology and votr cannot see its database (its server is no longer in the topology, or the database is gone), so it cannot bring what the region committed to the hub", src)})
			continue
		}
		srv := obs.Server(rs.Server)
		slot := schema.Slot(rs.Database, t.Hub.ID)
		sl, ok := srv.Slots[slot]
		if !ok {
			continue
		}
		if sl.Lost {
			undrained = append(undrained, Undrained{Feed: feed, Reason: fmt.Sprintf("its replication slot %s on %s was invalidated by PostgreSQL, so what region %d committed since the feed's last confirmation cannot be streamed to the hub", slot, rs.Server, src)})
			continue
		}
		actions = append(actions, Action{Op: Change, Kind: KindDrain, Region: intp(src), Feed: feed, Server: rs.Server,
			Database: rs.Database, Name: slot, Target: fmt.Sprintf("feed %s into %s", feed, On(hub.Database, hub.Server)),
			Detail: fmt.Sprintf("region %d left the topology: what it committed reaches the hub before its feed is removed", src)})
	}
	return actions, undrained
}

// Undrained is a feed into the hub that a plan removes without draining it.
type Undrained struct {
	Feed   string `json:"feed"`
	Reason string `json:"reason"`
}

func (u Undrained) String() string { return "feed " + u.Feed + ": " + u.Reason }

// UndrainedError is apply's refusal to remove feeds it cannot drain.
func UndrainedError(undrained []Undrained, flag string) error {
	msg := "apply would remove feeds into the hub that it cannot drain first; the ballots (and other rows) their regions committed that have not reached the hub yet would be lost:"
	for _, u := range undrained {
		msg += "\n  - " + u.String()
	}
	msg += "\nPut the region back into the topology (with its server) and apply, so that its feed catches up, then remove it again; or, to remove the feeds anyway and give up what they did not bring, run apply with " + flag
	return fmt.Errorf("%s", msg)
}
