package plan

import (
	"slices"

	"github.com/votr-dev/votr/schema"
)

// Teardown lists what destroy removes on server s besides the server
// itself: the slots (a feed's, or one its source's feeds share) and
// origins of votr's feeds in dbs (the databases destroy found to be
// votr's), then those databases. Active are the slots among them that a
// process holds: destroy refuses while there are any.
func Teardown(s *Server, dbs []string) (actions []Action, active []Slot) {
	for _, name := range sortedKeys(s.Slots) {
		sl := s.Slots[name]
		db, _, ok := schema.ParseSlot(name)
		if !ok {
			db, ok = schema.ParseSharedSlot(name)
		}
		if !ok || sl.Database != db || !slices.Contains(dbs, db) {
			continue
		}
		if sl.Active {
			active = append(active, sl)
		}
		actions = append(actions, Action{Op: Destroy, Kind: KindSlot, Server: s.Key, Database: db, Name: name, Target: On(name, s.Key)})
	}
	for _, name := range sortedKeys(s.Origins) {
		db, _, ok := schema.ParseOrigin(name)
		if !ok || !slices.Contains(dbs, db) {
			continue
		}
		actions = append(actions, Action{Op: Destroy, Kind: KindOrigin, Server: s.Key, Name: name, Target: On(name, s.Key)})
	}
	for _, db := range dbs {
		actions = append(actions, Action{Op: Destroy, Kind: KindDatabase, Server: s.Key, Database: db, Target: On(db, s.Key),
			Detail: "with its tables, publication and data"})
	}
	return actions, active
}
