package plan

import (
	"fmt"

	"github.com/votr-dev/votr/schema"
)

// State is what inspecting the live servers found: the facts a plan is
// computed from. It holds no passwords.
type State struct {
	Servers []*Server `json:"servers"`
	Regions []*Region `json:"regions"`
	// Former are regions recorded in the state file that the topology no
	// longer has (their databases stay until destroy).
	Former []*Region `json:"former,omitempty"`
	// Deployment is the id of the state dir the plan is made for: the
	// owner votr records on what it creates.
	Deployment string `json:"deployment,omitempty"`
}

// Server is one server as found.
type Server struct {
	Key     string `json:"key"`
	Managed bool   `json:"managed"`
	Dir     string `json:"dir,omitempty"` // managed: data directory
	Exists  bool   `json:"exists"`        // managed: initialised; remote: reachable
	Running bool   `json:"running"`
	// DataLost: a managed server whose data directory was deleted outside
	// votr; creating it again makes a new, empty cluster.
	DataLost bool `json:"dataLost,omitempty"`
	// StartedToInspect: a stopped managed server that inspection started.
	StartedToInspect bool `json:"startedToInspect,omitempty"`
	// Stopped: a managed server found stopped and left so by a read-only
	// plan; its regions, slots and schema are as the state file records
	// them, not as read from the server.
	Stopped bool `json:"stopped,omitempty"`
	// PortTaken: the port a stopped managed server was recorded on, now
	// used by another program (0: free). A read-only command leaves it
	// there; apply starts the server on a new free port and records it.
	PortTaken int             `json:"portTaken,omitempty"`
	Databases map[string]bool `json:"-"`
	Slots     map[string]Slot `json:"slots,omitempty"`
	Origins   map[string]bool `json:"origins,omitempty"`
	// Owners are the databases votr marked, with whose they are.
	Owners map[string]Owner `json:"owners,omitempty"`
	// MaxSlotWALKeep is the server's max_slot_wal_keep_size ("-1": no limit).
	MaxSlotWALKeep string `json:"maxSlotWalKeepSize,omitempty"`
	// Role is the user votr connects as, and what it may do.
	Role     string `json:"role,omitempty"`
	CreateDB bool   `json:"-"` // superuser or CREATEDB
}

// Slot is a logical replication slot as pg_replication_slots shows it, with
// the process holding it (from pg_stat_replication) when it is active.
type Slot struct {
	Name        string `json:"name"`
	Plugin      string `json:"plugin"`
	Database    string `json:"database"`
	Active      bool   `json:"active"`
	ActivePID   int    `json:"activePid,omitempty"`
	Application string `json:"application,omitempty"`
	Client      string `json:"client,omitempty"`
	// Lost: PostgreSQL invalidated the slot (it kept more WAL than
	// max_slot_wal_keep_size allows); it can never stream again.
	Lost bool `json:"lost,omitempty"`
	// WALStatus is pg_replication_slots.wal_status: reserved, extended,
	// unreserved (past max_slot_wal_keep_size, about to be invalidated) or lost.
	WALStatus string `json:"walStatus,omitempty"`
	// RetainedBytes is the WAL the slot keeps on its server (-1: unknown).
	RetainedBytes int64 `json:"retainedBytes"`
}

// Holder names the process holding an active slot.
func (s Slot) Holder() string {
	h := fmt.Sprintf("pid %d", s.ActivePID)
	if s.Application != "" {
		h += fmt.Sprintf(", application_name %q", s.Application)
	}
	if s.Client != "" {
		h += ", from " + s.Client
	}
	return h
}

// Region is one region's database as found.
type Region struct {
	ID       int    `json:"id"`
	Database string `json:"database"`
	Server   string `json:"server"`
	Exists   bool   `json:"exists"`
	// Missing lists the schema objects that are not there (all of them when
	// the database does not exist).
	Missing []string `json:"missing,omitempty"`
	// Outdated lists the schema objects that are there in another form
	// than this votr makes them (a trigger function's older body).
	Outdated []string `json:"outdated,omitempty"`
	// Seeded counts the topology's candidates present with their totals.
	Seeded int `json:"seeded"`
	// Extra counts candidate rows that are not among the topology's (a
	// topology whose candidates were lowered): workers would still vote for
	// them, so the plan refuses rather than ignore the key.
	Extra       int             `json:"extraCandidates,omitempty"`
	Checkpoints map[string]bool `json:"checkpoints,omitempty"`
	// SlotMembers are the feeds from this database that read a shared slot
	// (sink.Fanout), each with that slot's name.
	SlotMembers map[string]string `json:"slotMembers,omitempty"`
	// HasData: ballots or changed candidates; a spoke joining later must be
	// backfilled from a hub that has data.
	HasData bool `json:"hasData"`
	// HasPublication: the database has votr's publication.
	HasPublication bool `json:"hasPublication,omitempty"`
}

// Server is the server with key, or nil.
func (o *State) Server(key string) *Server {
	for _, s := range o.Servers {
		if s.Key == key {
			return s
		}
	}
	return nil
}

// Region is the topology region with id, or nil.
func (o *State) Region(id int) *Region {
	for _, r := range o.Regions {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// lostTables are the workload tables an existing region database lacks: it
// lost their rows, which its inbound feeds must bring back.
func (rs *Region) lostTables() []string {
	if !rs.Exists {
		return nil
	}
	var out []string
	for _, t := range schema.Tables {
		for _, m := range rs.Missing {
			if m == "table public."+t {
				out = append(out, "table public."+t)
			}
		}
	}
	return out
}
