// Package config reads a votr topology file: it parses the YAML with node
// positions, expands ${VAR} references from the environment, applies the
// documented defaults and validates everything before any database is touched.
// The sink and workload options are the engine's: the loader starts from
// sink.DefaultOptions and workload.DefaultOptions, overrides the keys the
// file gives and checks the result with their Validate.
// It also holds the process settings that are not part of a topology
// (state directory, logging, metrics, PostgreSQL binaries).
package config

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/votr-dev/votr/script"
	"github.com/votr-dev/votr/sink"
	"github.com/votr-dev/votr/workload"
)

// Topology is a validated topology file. Region 0 is the hub.
type Topology struct {
	// Path is the topology file as given; Dir is its directory, against which
	// relative paths (the script) are resolved.
	Path string
	Dir  string

	Hub    Region
	Spokes []Region

	Candidates int
	Workers    int // per spoke
	DrainDelay time.Duration
	// HubWorkers says whether the hub runs ballot workers too: by default
	// only with exactly one spoke (2-DC, both regions write, as in the
	// original); key hubWorkers: false turns them off.
	HubWorkers bool
	// MaxBallots, when positive, makes a fixed-size run: the workers of all
	// regions cast exactly this many ballots in all, then the run drains,
	// reports and ends (0: no limit).
	MaxBallots int
	// Script is the path of the TypeScript merge script, made absolute.
	Script string

	// Workload and Sink start from the engine's DefaultOptions, with the
	// keys the file gives.
	Workload workload.Options
	Sink     sink.Options

	// Program is the compiled merge script (compiled once, by Load).
	Program *script.Program
}

// Region is one PostgreSQL database taking part in the topology.
type Region struct {
	ID   int
	Name string // optional label; "" when not set
	// Connect is "local", "local:NAME" or a libpq URL (with ${VAR} expanded).
	Connect  string
	Database string // default votr_<id>
	// Pos is where the region is written in the file, for errors found later.
	Pos Pos
}

// LocalServer reports whether the region lives on a managed local server and
// that server's name ("default" for plain "local").
func (r Region) LocalServer() (name string, ok bool) {
	switch {
	case r.Connect == "local":
		return "default", true
	case strings.HasPrefix(r.Connect, "local:"):
		return strings.TrimPrefix(r.Connect, "local:"), true
	}
	return "", false
}

// ServerKey names the server a region lives on, so that two regions on the
// same server can be recognised. It never contains a password.
func (r Region) ServerKey() string {
	if name, ok := r.LocalServer(); ok {
		return "local:" + name
	}
	u, err := url.Parse(r.Connect)
	if err != nil {
		return Redact(r.Connect)
	}
	// host and host:5432 are the same server; host names are case-insensitive.
	port := u.Port()
	if port == "" {
		port = "5432"
	}
	return strings.ToLower(u.Hostname()) + ":" + port
}

// Label is how the region is shown to a user: "1 (us-east)" or "0 (hub)".
func (r Region) Label() string {
	name := r.Name
	if name == "" && r.ID == 0 {
		name = "hub"
	}
	if name == "" {
		return fmt.Sprint(r.ID)
	}
	return fmt.Sprintf("%d (%s)", r.ID, name)
}

// Regions returns the hub followed by the spokes, in file order.
func (t *Topology) Regions() []Region {
	return append([]Region{t.Hub}, t.Spokes...)
}

// Region returns the region with the given id.
func (t *Topology) Region(id int) (Region, bool) {
	for _, r := range t.Regions() {
		if r.ID == id {
			return r, true
		}
	}
	return Region{}, false
}

// Feed is one direction of one hub–spoke pair.
type Feed struct {
	Source, Target Region
}

// String names the feed as on the command line: "1:0" is spoke 1 → hub.
func (f Feed) String() string { return fmt.Sprintf("%d:%d", f.Source.ID, f.Target.ID) }

// Feeds returns the two feeds of every spoke: spoke→hub, then hub→spoke.
func (t *Topology) Feeds() []Feed {
	var feeds []Feed
	for _, s := range t.Spokes {
		feeds = append(feeds, Feed{Source: s, Target: t.Hub}, Feed{Source: t.Hub, Target: s})
	}
	return feeds
}

// ParseFeed finds the feed named "S:D" (as given to `votr sink --feed`).
func (t *Topology) ParseFeed(s string) (Feed, error) {
	var src, dst int
	if _, err := fmt.Sscanf(s, "%d:%d", &src, &dst); err != nil || fmt.Sprintf("%d:%d", src, dst) != s {
		return Feed{}, fmt.Errorf("feed %q: want SOURCE:TARGET region ids, e.g. 1:0 for spoke 1 → hub", s)
	}
	for _, f := range t.Feeds() {
		if f.Source.ID == src && f.Target.ID == dst {
			return f, nil
		}
	}
	return Feed{}, fmt.Errorf("feed %q is not in the topology: feeds join the hub (0) and a spoke, e.g. %s", s, t.Feeds()[0])
}

// RunsWorkers says whether region id runs ballot workers: every spoke, and
// the hub when HubWorkers is set.
func (t *Topology) RunsWorkers(id int) bool {
	return id != t.Hub.ID || t.HubWorkers
}
