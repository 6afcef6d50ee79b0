package config

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// regionSrc is a parsed region with the positions its checks report at.
type regionSrc struct {
	Region
	ok                     bool // id and database are valid, so it takes part in uniqueness checks
	idAt, dbAt, nameAt, at *yaml.Node
	// As written in the file, for messages (see loader.scalar).
	nameShown, connectShown, dbShown string
}

func (l *loader) hub(root *yaml.Node, e entry) (regionSrc, bool) {
	if !e.ok() {
		l.errorf(root, "the file has no hub; add a hub: section (region 0), e.g. hub: {connect: local}")
		return regionSrc{}, false
	}
	v := resolve(e.val)
	if v.Kind != yaml.MappingNode {
		l.errorf(v, "hub is %s, not a mapping; write its settings below it, e.g. hub: {connect: local}", describe(v))
		return regionSrc{}, false
	}
	return l.region(v, "in hub", true), true
}

func (l *loader) spokes(root *yaml.Node, e entry) []regionSrc {
	if !e.ok() {
		l.errorf(root, "the file has no spokes; add a spokes: list with at least one region, e.g. spokes: [{id: 1}]")
		return nil
	}
	v := resolve(e.val)
	switch {
	case isNull(v) || (v.Kind == yaml.SequenceNode && len(v.Content) == 0):
		l.errorf(v, "spokes is empty; add at least one spoke, e.g. - id: 1")
		return nil
	case v.Kind != yaml.SequenceNode:
		l.errorf(v, "spokes is %s, not a list; write each spoke below it on a line starting with - id: N", describe(v))
		return nil
	case len(v.Content) > maxSpokes:
		l.errorf(v, "%d spokes is more than votr supports (%d); split the topology", len(v.Content), maxSpokes)
		return nil
	}
	var out []regionSrc
	for _, item := range v.Content {
		item = resolve(item)
		if item.Kind != yaml.MappingNode {
			l.errorf(item, "a spoke is %s, not a mapping; write it as - id: N, with connect:, name: and database: below as needed", describe(item))
			continue
		}
		out = append(out, l.region(item, "in a spoke", false))
	}
	return out
}

func (l *loader) region(n *yaml.Node, where string, isHub bool) regionSrc {
	f := l.fields(n, where, regionKeys)
	r := regionSrc{at: n, Region: Region{Pos: pos(n), Connect: DefaultConnect}, connectShown: DefaultConnect}
	idOK := true
	if e := f["id"]; e.ok() {
		r.idAt = e.val
		r.ID, idOK = l.regionID(e, isHub)
	} else if !isHub {
		l.errorf(n, "a spoke has no id; add id: N (a positive integer that stays with the region for good)")
		idOK = false
	}

	if e := f["name"]; e.ok() {
		r.nameAt = e.val
		if s, shown, ok := l.scalar(e, "name", "a short label like us-east"); ok {
			if msg := checkName(s, shown); msg != "" {
				l.errorf(e.val, "%s", msg)
			} else {
				r.Name, r.nameShown = s, shown
			}
		}
	}
	if e := f["connect"]; e.ok() {
		if s, shown, ok := l.scalar(e, "connect", `"local", "local:NAME" or a postgresql:// URL`); ok {
			if msg := checkConnect(s, shown); msg != "" {
				l.errorf(e.val, "%s", msg)
			} else {
				r.Connect, r.connectShown = s, shown
			}
		}
	}
	dbOK := idOK
	if e := f["database"]; e.ok() {
		r.dbAt = e.val
		s, shown, ok := l.scalar(e, "database", "a database name like votr_1")
		if ok {
			if msg := checkDatabase(s, shown); msg != "" {
				l.errorf(e.val, "%s", msg)
				ok = false
			}
		}
		r.Database, r.dbShown, dbOK = s, shown, ok
	} else {
		r.Database = fmt.Sprintf("votr_%d", r.ID)
		r.dbShown = r.Database
	}
	r.ok = idOK && dbOK
	return r
}

// regionID reads a region's id: 0 for the hub, 1 to maxSpokeID for a spoke.
func (l *loader) regionID(e entry, isHub bool) (int, bool) {
	s, shown, ok := l.scalar(e, "id", "an integer (the region id)")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	switch {
	case isHub && (err != nil || n != 0):
		l.errorf(e.val, "the hub is always region 0; remove id: from hub or set it to 0")
	case isHub:
		return 0, true
	case errors.Is(err, strconv.ErrRange):
		l.errorf(e.val, "spoke id %s is too large; spoke ids are 1 to %d", short(shown), maxSpokeID)
	case err != nil:
		l.errorf(e.val, "id must be an integer (a spoke's region id), not %s; e.g. id: 1", short(shown))
	case n <= 0:
		l.errorf(e.val, "spoke id %d is not positive; spoke ids are 1 to %d (0 is the hub): pick an unused one and never renumber it", n, maxSpokeID)
	case n > maxSpokeID:
		l.errorf(e.val, "spoke id %d is too large; spoke ids are 1 to %d", n, maxSpokeID)
	default:
		return int(n), true
	}
	return 0, false
}

func checkName(s, shown string) string {
	if s == "" {
		return "name is empty; give a short label like us-east, or remove the key"
	}
	if utf8.RuneCountInString(s) > maxName {
		return fmt.Sprintf("name %s is longer than %d characters; use a short label like us-east", short(shown), maxName)
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return fmt.Sprintf("name %s contains a control or invisible character; use printable characters only", short(shown))
		}
	}
	return ""
}

func checkDatabase(s, shown string) string {
	if contains(reservedDBs, s) {
		return fmt.Sprintf("database %s is a PostgreSQL system database, and votr drops region databases on destroy; use a name of its own like votr_1", short(shown))
	}
	if !identifier.MatchString(s) || len(s) > maxDatabase {
		return fmt.Sprintf("database %s is not a plain identifier; use lowercase letters, digits and _, starting with a letter or _, at most %d characters (replication slot names are <database>_to_<id> and PostgreSQL cuts names at 63)", short(shown), maxDatabase)
	}
	return ""
}

// unique reports repeated spoke ids, names, and databases on one server,
// and regions that reach one server with different logins.
func (l *loader) unique(regions []regionSrc) {
	ids := map[int]regionSrc{}
	dbs := map[string]regionSrc{}
	names := map[string]regionSrc{}
	servers := map[string]regionSrc{}
	for _, r := range regions {
		if r.Name != "" {
			if prev, dup := names[r.Name]; dup {
				l.errorf(r.nameAt, "name %s is already the label of region %d (line %d); give each region its own name", short(r.nameShown), prev.ID, prev.Pos.Line)
			} else {
				names[r.Name] = r
			}
		}
		if !r.ok {
			continue
		}
		if prev, dup := ids[r.ID]; dup {
			l.errorf(r.idAt, "spoke id %d is already used at line %d; region ids must be unique", r.ID, prev.Pos.Line)
			continue
		}
		ids[r.ID] = r
		key := r.ServerKey() + "/" + r.Database
		if prev, dup := dbs[key]; dup {
			at := r.dbAt
			if at == nil {
				at = r.at
			}
			l.errorf(at, "database %s is already used by region %d (line %d) on the same server (connect: %s); give one of them its own database: name", short(r.dbShown), prev.ID, prev.Pos.Line, short(Redact(r.connectShown)))
			continue
		}
		dbs[key] = r
		if _, local := r.LocalServer(); local {
			continue
		}
		// votr connects to a server one way (its slots, databases and
		// sessions are the server's), with the first region's URL: another
		// user, password or setting (sslmode, say) would be ignored.
		if prev, seen := servers[r.ServerKey()]; !seen {
			servers[r.ServerKey()] = r
		} else if !sameLogin(prev.Connect, r.Connect) {
			l.errorf(r.at, "region %d reaches server %s with another user, password or parameters than region %d (line %d); votr connects to a server one way, so give every region on it the same connect URL (each region's database: picks its database)",
				r.ID, r.ServerKey(), prev.ID, prev.Pos.Line)
		}
	}
}

// sameLogin reports whether two connect URLs of one server log in alike:
// the same user, password and parameters (the database is the region's).
func sameLogin(a, b string) bool {
	ua, err := url.Parse(a)
	if err != nil {
		return a == b
	}
	ub, err := url.Parse(b)
	if err != nil {
		return false
	}
	return ua.User.String() == ub.User.String() && ua.Query().Encode() == ub.Query().Encode()
}
