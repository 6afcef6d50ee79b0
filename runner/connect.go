package runner

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/localpg"
)

// server is one PostgreSQL server of a topology: a managed local server or a
// remote one reached by URL. Regions that share a ServerKey share a server.
type server struct {
	key     string          // config.Region.ServerKey(): never holds a password
	managed *localpg.Server // nil for a server reached by URL
	dir     string          // managed: its data directory
	url     string          // remote: the connect URL of the first region on it
}

// servers groups the regions of a topology by server, in the order the
// servers first appear (hub first), so plans list them deterministically.
func (r *Runner) servers(regions []config.Region) ([]*server, error) {
	var out []*server
	seen := map[string]*server{}
	for _, reg := range regions {
		key := reg.ServerKey()
		if _, ok := seen[key]; ok {
			continue
		}
		s := &server{key: key}
		if name, ok := reg.LocalServer(); ok {
			s.managed, s.dir = r.localServer(name), r.serverDir(name)
		} else {
			if _, err := regionDSN(reg.Connect, reg.Database); err != nil {
				return nil, fmt.Errorf("region %s: %w", reg.Label(), err)
			}
			s.url = reg.Connect
		}
		seen[key] = s
		out = append(out, s)
	}
	return out, nil
}

// localServer is the managed server NAME, with its data under the state dir.
func (r *Runner) localServer(name string) *localpg.Server {
	return localpg.New(localpg.Options{
		Dir:    r.serverDir(name),
		BinDir: r.opts.BinDir,
		Logger: r.log,
	})
}

// serverDir is where managed server NAME keeps its data: under the state
// dir, unless the server's OS user cannot reach it there (votr as root in a
// checkout under /root, say); then under /var/tmp, in a directory named after
// the state dir, so every command of this state dir finds the same server.
func (r *Runner) serverDir(name string) string {
	dir := filepath.Join(r.opts.StateDir, "servers", name)
	if localpg.Reachable(dir) {
		return dir
	}
	abs, err := filepath.Abs(r.opts.StateDir)
	if err != nil {
		abs = r.opts.StateDir
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join("/var/tmp", fmt.Sprintf("votr-%x", sum[:6]), "servers", name)
}

// dsn is how to reach database db on this server.
func (s *server) dsn(db string) (string, error) {
	if s.managed != nil {
		return s.managed.DSN(db), nil
	}
	return regionDSN(s.url, db)
}

// maintenanceDSN reaches the server for catalog queries and CREATE/DROP
// DATABASE: the database named in the URL, else "postgres".
func (s *server) maintenanceDSN() (string, error) {
	if s.managed != nil {
		return s.managed.DSN("postgres"), nil
	}
	u, err := url.Parse(s.url)
	if err != nil {
		return "", fmt.Errorf("server %s: connect URL does not parse; check it with `votr plan`", s.key)
	}
	db := strings.TrimPrefix(u.Path, "/")
	if db == "" {
		db = "postgres"
	}
	return regionDSN(s.url, db)
}

// regionDSN is the URL connect with its database replaced by db. Query
// parameters (sslmode, ...) stay. pgx parses the result, so a URL that pgx
// could not use fails here, before anything is touched; the error never
// quotes the URL, which may hold a password.
func regionDSN(connect, db string) (string, error) {
	u, err := url.Parse(connect)
	if err != nil {
		return "", fmt.Errorf("connect URL %s does not parse: %v", config.Redact(connect), "check its syntax and percent-encode special characters")
	}
	u.Path = "/" + db
	u.RawPath = ""
	q := u.Query()
	if q.Has("dbname") {
		q.Del("dbname")
		u.RawQuery = q.Encode()
	}
	dsn := u.String()
	if _, err := pgx.ParseConfig(dsn); err != nil {
		return "", fmt.Errorf("connect URL %s is not usable by the PostgreSQL driver; check its host, port and parameters", config.Redact(connect))
	}
	return dsn, nil
}

// connect opens one connection. Errors carry the redacted DSN only, and a
// hint on what to check.
func connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w%s", config.Redact(dsn), config.ScrubError(err, dsn), connectHint(err))
	}
	return conn, nil
}

// connectHint says what to check for a connection that failed.
func connectHint(err error) string {
	msg := err.Error()
	switch code := pgCode(err); {
	case code == "28P01" || code == "28000":
		return " (check the user name and password in the region's connect URL, best given as ${VAR}, and the server's pg_hba.conf)"
	case code == "3D000":
		return " (the database in the connect URL's path must exist; leave the path empty to use postgres)"
	case strings.Contains(msg, "server refused TLS connection"):
		return " (the server does not offer TLS: enable ssl on it, or lower sslmode in the connect URL)"
	case strings.Contains(msg, "dial error"), strings.Contains(msg, "timeout"):
		return " (is the server running and reachable at that host and port? check the region's connect URL)"
	}
	return ""
}
