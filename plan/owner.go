package plan

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/votr-dev/votr/schema"
)

// Owner is whose a region database is, as the comment votr puts on every
// database it creates records it. Everything else votr makes for a region
// (schema, publication, the slots of its feeds, their origins) lives in
// that database or is named after it, so the database's owner owns them
// too: one comment, read from pg_database in the query that lists the
// databases, answers for all of them.
type Owner struct {
	Region int `json:"region"`
	// Deployment is the id of the state directory that created the
	// database ("" for one made before votr recorded deployments).
	Deployment string `json:"deployment,omitempty"`
	// StateDir is where that deployment's state lives, "host:/path".
	StateDir string `json:"stateDir,omitempty"`
}

var ownerRE = regexp.MustCompile(`^votr region (\d+)(?: of deployment ([0-9a-z]+)(?: \(state dir (.*)\))?)?$`)

// OwnerComment is the database comment that marks a database as region's
// of deployment (made in stateDir).
func OwnerComment(region int, deployment, stateDir string) string {
	c := fmt.Sprintf("votr region %d", region)
	if deployment != "" {
		c += " of deployment " + deployment
		if stateDir != "" {
			c += " (state dir " + stateDir + ")"
		}
	}
	return c
}

// ParseOwner reads a database comment; ok is false for one votr did not
// write.
func ParseOwner(comment string) (Owner, bool) {
	m := ownerRE.FindStringSubmatch(comment)
	if m == nil {
		return Owner{}, false
	}
	id, err := strconv.Atoi(m[1])
	if err != nil {
		return Owner{}, false
	}
	return Owner{Region: id, Deployment: m[2], StateDir: m[3]}, true
}

// Describe names the owner as a person reads it.
func (o Owner) Describe() string {
	if o.StateDir == "" {
		return "votr deployment " + o.Deployment
	}
	return fmt.Sprintf("votr deployment %s (state dir %s)", o.Deployment, o.StateDir)
}

// Foreign is a database of another deployment that the plan reads, or
// would change or remove.
type Foreign struct {
	Server   string `json:"server"`
	Database string `json:"database"`
	Owner    Owner  `json:"owner"`
}

func (f Foreign) String() string {
	return fmt.Sprintf("database %s belongs to %s", On(f.Database, f.Server), f.Owner.Describe())
}

// Ownership finds the databases of other deployments among those the plan
// works on: the regions of the topology and the former ones, and every
// database an action touches (a slot's or an origin's by its name). They
// go into p.Foreign with a note each. With takeOver, each becomes this
// deployment's by a "~ database" action first, and the plan proceeds;
// without it, apply and destroy refuse (the caller's part).
func Ownership(p *Plan, obs *State, takeOver bool) {
	seen := map[string]bool{}
	var found []Foreign
	consider := func(server, db string) {
		key := server + "/" + db
		if db == "" || seen[key] {
			return
		}
		seen[key] = true
		s := obs.Server(server)
		if s == nil {
			return
		}
		o, ok := s.Owners[db]
		if !ok || o.Deployment == obs.Deployment || (o.Deployment == "" && !takeOver) {
			return
		}
		found = append(found, Foreign{Server: server, Database: db, Owner: o})
	}
	for _, rs := range append(append([]*Region{}, obs.Regions...), obs.Former...) {
		if rs.Exists {
			consider(rs.Server, rs.Database)
		}
	}
	for _, a := range p.Actions {
		db := a.Database
		if a.Kind == KindOrigin {
			db, _, _ = schema.ParseOrigin(a.Name)
		}
		consider(a.Server, db)
	}
	sort.SliceStable(found, func(i, j int) bool {
		return found[i].Server+"/"+found[i].Database < found[j].Server+"/"+found[j].Database
	})
	p.Foreign = found
	if len(found) == 0 {
		return
	}
	var takes []Action
	for _, f := range found {
		if takeOver {
			what := "made before deployments were recorded"
			if f.Owner.Deployment != "" {
				what = "of " + f.Owner.Describe()
			}
			takes = append(takes, Action{Op: Change, Kind: KindDatabase, Region: intp(f.Owner.Region), Server: f.Server,
				Database: f.Database, Target: On(f.Database, f.Server),
				Detail: fmt.Sprintf("take over: record it as deployment %s's (it was %s)", obs.Deployment, what)})
			continue
		}
		p.Notes = append(p.Notes, fmt.Sprintf("%s, not to this state dir's (%s): apply and destroy refuse to change or remove it or its slots and origins; run them with --take-over to make it this deployment's",
			f, ThisDeployment(obs)))
	}
	// Taken over first: an apply stopped after these owns what it goes on with.
	i := 0
	for i < len(p.Actions) && p.Actions[i].Kind == KindServer {
		i++
	}
	p.Actions = append(p.Actions[:i], append(takes, p.Actions[i:]...)...)
}

// ThisDeployment names the deployment of the state dir a plan was made
// for.
func ThisDeployment(obs *State) string {
	if obs.Deployment == "" {
		return "no deployment recorded yet"
	}
	return "deployment " + obs.Deployment
}

// ForeignError is why apply or destroy refuses: the databases of other
// deployments it would work on, and the way on.
func ForeignError(command string, fs []Foreign, obs *State) error {
	var parts []string
	for _, f := range fs {
		parts = append(parts, f.String())
	}
	return fmt.Errorf("%s refused, nothing was changed: %s, not to this state dir's (%s); another state dir manages them. Run %s with its --state-dir, or give these regions other databases; to take them over from this state dir, run %s with --take-over",
		command, strings.Join(parts, "; "), ThisDeployment(obs), command, command)
}
