package pgtest_test

import (
	"testing"

	"github.com/votr-dev/votr/internal/pgtest"
)

func TestStartCreateDB(t *testing.T) {
	s := pgtest.Start(t)
	dsn := pgtest.CreateDB(t, s, "votr_1")
	pgtest.Exec(t, dsn, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1), (2), (40)")
	if got := pgtest.QueryInt(t, dsn, "SELECT sum(n) FROM t"); got != 43 {
		t.Fatalf("sum = %d, want 43", got)
	}
	if got := pgtest.QueryInt(t, dsn, "SELECT count(*) FROM pg_settings WHERE name = 'wal_level' AND setting = 'logical'"); got != 1 {
		t.Fatalf("wal_level is not logical")
	}
}

// Two servers at once must not collide (ports, sockets, data).
func TestTwoServers(t *testing.T) {
	a, b := pgtest.Start(t), pgtest.Start(t)
	if a.Port() == b.Port() {
		t.Fatalf("both servers on port %d", a.Port())
	}
	pgtest.CreateDB(t, a, "same")
	pgtest.CreateDB(t, b, "same")
}
