package pgtest_test

import (
	"testing"

	"github.com/votr-dev/votr/internal/pgtest"
)

func TestStartCreateDB(t *testing.T) {
	s := pgtest.Start(t)
	dsn := pgtest.CreateDB(t, s, "votr_1")
	pgtest.Exec(t, dsn, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1), (2), (40)")
	tests := []struct {
		sql  string
		args []any
		want int64
	}{
		{"SELECT sum(n) FROM t", nil, 43},         // bigint
		{"SELECT sum(n::bigint) FROM t", nil, 43}, // numeric
		{"SELECT count(*) FROM t WHERE n > $1", []any{1}, 2},
		{"SELECT count(*) FROM pg_settings WHERE name = 'wal_level' AND setting = 'logical'", nil, 1},
	}
	for _, tc := range tests {
		if got := pgtest.QueryInt(t, dsn, tc.sql, tc.args...); got != tc.want {
			t.Errorf("%s = %d, want %d", tc.sql, got, tc.want)
		}
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
	pgtest.Exec(t, a.DSN("same"), "CREATE TABLE only_on_a (n int)")
	if got := pgtest.QueryInt(t, b.DSN("same"), "SELECT count(*) FROM pg_tables WHERE tablename = 'only_on_a'"); got != 0 {
		t.Fatal("servers share data")
	}
}
