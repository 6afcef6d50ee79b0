package localpg

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
)

// newSecret is a fresh superuser password: 192 random bits in an alphabet
// that needs no escaping in URLs or connection strings.
func newSecret() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate the server's password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// secretPath is where the cluster keeps its superuser's password. It lives
// in the data directory so that it is created, copied and removed with the
// cluster it belongs to.
func (s *Server) secretPath() string { return filepath.Join(s.dataDir(), secretFile) }

// secret is the superuser's password, "" if the cluster has none yet.
func (s *Server) secret() string {
	b, err := os.ReadFile(s.secretPath())
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// ensureAuth makes the running server ask for the password over TCP. A
// cluster made by an older votr (which trusted every TCP login, and has no
// secret) gets a password for its superuser, then votr's pg_hba.conf, in
// that order, so that votr never locks itself out.
func (s *Server) ensureAuth(ctx context.Context, acct *account) error {
	secret := s.secret()
	if secret != "" && s.hbaIsVotrs() {
		return nil
	}
	conn, err := pgx.Connect(ctx, dsnFor(s.port, secret, "postgres"))
	if err != nil {
		return fmt.Errorf("server %s: set up password authentication: %w; if it was made by an older votr, `votr destroy` and apply again", s.opts.Dir, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if secret == "" {
		if secret, err = newSecret(); err != nil {
			return err
		}
		verifier, err := scramVerifier(secret)
		if err != nil {
			return err
		}
		// The verifier, not the password, travels in the statement.
		if _, err := conn.Exec(ctx, "ALTER ROLE postgres PASSWORD '"+verifier+"'"); err != nil {
			return fmt.Errorf("server %s: set the superuser's password: %w", s.opts.Dir, err)
		}
		if err := writeOwned(s.secretPath(), []byte(secret+"\n"), acct); err != nil {
			return err
		}
		s.log.Warn("the server trusted every local TCP login (made by an older votr); it now asks for a password, kept in "+s.secretPath(), "port", s.port)
	}
	if err := writeHBA(s.dataDir(), acct); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("server %s: reload pg_hba.conf: %w", s.opts.Dir, err)
	}
	return nil
}

// scramVerifier is what PostgreSQL stores for a SCRAM-SHA-256 password
// (RFC 5802/7677 keys, PostgreSQL's "SCRAM-SHA-256$iter:salt$stored:server"
// text form); ALTER ROLE accepts it as is.
func scramVerifier(password string) (string, error) {
	const iterations = 4096
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("salt: %w", err)
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("derive password key: %w", err)
	}
	keyed := func(name string) []byte {
		m := hmac.New(sha256.New, salted)
		m.Write([]byte(name))
		return m.Sum(nil)
	}
	stored := sha256.Sum256(keyed("Client Key"))
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(stored[:]), b64(keyed("Server Key"))), nil
}

// quoteConnValue quotes a value for a keyword/value connection string.
func quoteConnValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
