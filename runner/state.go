package runner

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
)

// State is what apply records in <state dir>/state.json: enough for destroy
// to find everything without the topology file. It is a record, not the
// truth: plan and destroy inspect the live servers, and use the state only
// to know which databases and regions votr made.
type State struct {
	Version  int    `json:"version"`
	Topology string `json:"topology"` // absolute path of the topology file
	// Deployment identifies this state dir: generated once, recorded on
	// every database votr creates (their comment), so that another state
	// dir pointed at the same servers knows they are not its own.
	Deployment string `json:"deployment,omitempty"`
	// Regions are the regions apply worked on, including ones since removed
	// from the topology (their databases stay until destroy).
	Regions []StateRegion `json:"regions"`
	// Servers are the managed servers apply created or started.
	Servers []StateServer `json:"servers"`
	Slots   []StateSlot   `json:"slots"`
	// Drained are feeds into the hub of spokes that left the topology,
	// drained after they left (leave.go): removing them loses nothing,
	// even once their server is gone from the topology.
	Drained []string  `json:"drained,omitempty"`
	Updated time.Time `json:"updated"`
}

// StateRegion is one region's database. Connect is redacted.
type StateRegion struct {
	ID       int    `json:"id"`
	Connect  string `json:"connect"`
	Server   string `json:"server"`
	Database string `json:"database"`
	// Created: votr ran CREATE DATABASE for it (recorded just before).
	Created bool `json:"created"`
}

// StateServer is a managed local server.
type StateServer struct {
	Key string `json:"key"`
	Dir string `json:"dir"`
}

// StateSlot is a replication slot apply created.
type StateSlot struct {
	Server   string `json:"server"`
	Name     string `json:"name"`
	Database string `json:"database"`
	Feed     string `json:"feed"`
}

const stateVersion = 1

func (r *Runner) statePath() string { return filepath.Join(r.opts.StateDir, "state.json") }

// backupPath holds the state as it was before the last save: a state file
// damaged later (by hand, or by a disk) can be recovered from it, keeping
// the record of regions removed earlier.
func (r *Runner) backupPath() string { return r.statePath() + ".bak" }

// loadState reads the state file; a missing file is an empty state.
func (r *Runner) loadState() (*State, error) {
	b, err := os.ReadFile(r.statePath())
	if errors.Is(err, fs.ErrNotExist) {
		return &State{Version: stateVersion, Deployment: newDeployment()}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		hint := "fix or remove it (then pass the topology file to destroy)"
		if _, berr := os.Stat(r.backupPath()); berr == nil {
			hint = fmt.Sprintf("the state before the last change is in %s: copy it over %s and run the command again", r.backupPath(), r.statePath())
		}
		return nil, fmt.Errorf("state file %s is corrupt (%v); %s", r.statePath(), err, hint)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("state file %s has version %d; this votr reads version %d", r.statePath(), s.Version, stateVersion)
	}
	if s.Deployment == "" {
		// Recorded by a votr before deployment ids: this one is kept from
		// the next save on.
		s.Deployment = newDeployment()
	}
	return &s, nil
}

// newDeployment is a fresh deployment id: 48 random bits, enough that two
// state dirs never share one.
func newDeployment() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		// crypto/rand does not fail on Linux; a clock-based id still
		// tells state dirs apart.
		return fmt.Sprintf("%012x", time.Now().UnixNano()&0xffffffffffff)
	}
	return hex.EncodeToString(b)
}

// ownerComment is the comment on a database votr creates for region id:
// which region, and which deployment (state dir) it belongs to.
func (r *Runner) ownerComment(id int, st *State) string {
	dir, err := filepath.Abs(r.opts.StateDir)
	if err != nil {
		dir = r.opts.StateDir
	}
	host, _ := os.Hostname()
	return plan.OwnerComment(id, st.Deployment, host+":"+dir)
}

// saveState writes the state atomically: a crash leaves the old or the new
// file, never half of one.
func (r *Runner) saveState(s *State) error {
	s.Version = stateVersion
	s.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := os.MkdirAll(r.opts.StateDir, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	tmp, err := os.CreateTemp(r.opts.StateDir, ".state-*.json")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := r.backupState(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), r.statePath()); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	// The rename is durable only once the directory is.
	return syncDir(r.opts.StateDir)
}

// backupState keeps the current state file, if it is sound, as the backup.
func (r *Runner) backupState() error {
	b, err := os.ReadFile(r.statePath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("back up state: %w", err)
	}
	if !json.Valid(b) {
		// Never replace a good backup with a damaged state.
		return nil
	}
	tmp, err := os.CreateTemp(r.opts.StateDir, ".state-bak-*.json")
	if err != nil {
		return fmt.Errorf("back up state: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(b)
	serr := tmp.Sync()
	if cerr := tmp.Close(); werr == nil && serr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = serr
	}
	if werr != nil {
		return fmt.Errorf("back up state: %w", werr)
	}
	if err := os.Rename(tmp.Name(), r.backupPath()); err != nil {
		return fmt.Errorf("back up state: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	return nil
}

func (r *Runner) removeState() error {
	for _, p := range []string{r.statePath(), r.backupPath()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove state: %w", err)
		}
	}
	return nil
}

// owned is the set of "server/database" that votr created.
func (s *State) owned() map[string]bool {
	m := map[string]bool{}
	for _, r := range s.Regions {
		if r.Created {
			m[r.Server+"/"+r.Database] = true
		}
	}
	return m
}

// addRegion records a region (once per server and database).
func (s *State) addRegion(reg config.Region, created bool) {
	key := reg.ServerKey()
	for i, r := range s.Regions {
		if r.Server == key && r.Database == reg.Database {
			s.Regions[i].ID = reg.ID
			s.Regions[i].Connect = reg.Redacted()
			s.Regions[i].Created = s.Regions[i].Created || created
			return
		}
	}
	s.Regions = append(s.Regions, StateRegion{ID: reg.ID, Connect: reg.Redacted(), Server: key, Database: reg.Database, Created: created})
}

// markCreated records database db on server, when the state has it, as
// one votr created (taken over with --take-over).
func (s *State) markCreated(server, db string) {
	for i, r := range s.Regions {
		if r.Server == server && r.Database == db {
			s.Regions[i].Created = true
		}
	}
}

// keepOnly drops from the state everything that is not on servers: what a
// destroy that skipped those servers leaves recorded.
func (s *State) keepOnly(servers []string) {
	s.Regions = slices.DeleteFunc(s.Regions, func(r StateRegion) bool { return !slices.Contains(servers, r.Server) })
	s.Slots = slices.DeleteFunc(s.Slots, func(v StateSlot) bool { return !slices.Contains(servers, v.Server) })
	s.Servers = slices.DeleteFunc(s.Servers, func(v StateServer) bool { return !slices.Contains(servers, v.Key) })
}

func (s *State) addServer(key, dir string) {
	if !slices.ContainsFunc(s.Servers, func(v StateServer) bool { return v.Key == key }) {
		s.Servers = append(s.Servers, StateServer{Key: key, Dir: dir})
	}
}

func (s *State) addSlot(sl StateSlot) {
	if !slices.ContainsFunc(s.Slots, func(v StateSlot) bool { return v.Server == sl.Server && v.Name == sl.Name }) {
		s.Slots = append(s.Slots, sl)
	}
}

func (s *State) removeSlot(server, name string) {
	s.Slots = slices.DeleteFunc(s.Slots, func(v StateSlot) bool { return v.Server == server && v.Name == name })
}

// former returns the recorded regions the topology t no longer has, as
// regions to inspect. Their connect is filled from t's region on the same
// server when there is one (the recorded value is redacted).
func (s *State) former(t *config.Topology) []config.Region {
	var out []config.Region
	for _, sr := range s.Regions {
		if t != nil && slices.ContainsFunc(t.Regions(), func(r config.Region) bool {
			return r.ServerKey() == sr.Server && r.Database == sr.Database
		}) {
			continue
		}
		reg := config.Region{ID: sr.ID, Connect: sr.Connect, Database: sr.Database}
		if t != nil {
			for _, r := range t.Regions() {
				if r.ServerKey() == sr.Server {
					reg.Connect = r.Connect
					break
				}
			}
		}
		out = append(out, reg)
	}
	return out
}

// RecordedTopology is the topology file the last apply in this state dir
// used ("" when nothing is recorded).
func (r *Runner) RecordedTopology() string {
	st, err := r.loadState()
	if err != nil {
		return ""
	}
	return st.Topology
}
