package runner

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/votr-dev/votr/internal/pgtest"
)

// A process killed while its worker's transaction waited for a row lock
// leaves a server session that has the whole transaction and commits it
// once the lock is free. The next run must not count its region's ballots
// before that session has ended: here such a session (named as a killed
// process of the deployment would name it) waits on a totals row, and the
// lock is released only once the session is gone or the run's workers are
// casting. Without the wait the run counts its base, the session then
// commits, and the region holds one ballot more than the count says.
//
// A session of a live process of the deployment is not ended: the run
// refuses, naming it.
func TestKilledWorkersSessionSettledBeforeCounting(t *testing.T) {
	ctx, pg, topo, r, out := deployedAndRun(t)
	st, err := r.loadState()
	if err != nil {
		t.Fatal(err)
	}
	spoke := pg.DSN("votr_1")
	candidate := pgtest.Query(t, spoke, `SELECT candidate::text FROM totals ORDER BY candidate LIMIT 1`)[0]

	// A dead process id: a child that has exited and been reaped.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	orphanName := fmt.Sprintf("%s %s pid %d", workersPrefix, st.Deployment, gone.Process.Pid)

	locker, err := pgx.Connect(ctx, spoke)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(context.WithoutCancel(ctx))
	lockTx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockTx.Exec(ctx, `SELECT 1 FROM totals WHERE candidate = $1 FOR UPDATE`, candidate); err != nil {
		t.Fatal(err)
	}

	// The orphan: a ballot and its total in one implicit transaction, sent
	// whole, then the client's socket closed without a goodbye while the
	// server waits for the row lock.
	cfg, err := pgconn.ParseConfig(spoke)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = orphanName
	orphan, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	orphanPID := orphan.PID()
	// Taken from pgconn, so that nothing of pgconn's (a cancel request on
	// a broken read) ends the transaction: the socket is closed as a
	// killed process's would be.
	hijacked, err := orphan.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	fe := hijacked.Frontend
	fe.Send(&pgproto3.Query{String: fmt.Sprintf(`INSERT INTO ballots (candidate) VALUES ('%s'); UPDATE totals SET total = total + 1 WHERE candidate = '%s'`,
		candidate, candidate)})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		return pgtest.QueryInt(t, spoke, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`, orphanPID) == 1
	})
	_ = hijacked.Conn.Close()

	// Released once the orphan is gone (its end settled), or once a session
	// of the run waits on the row (the run counted its ballots before).
	watcher, err := pgx.Connect(ctx, spoke) // outside a transaction: pg_stat_activity is read afresh
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close(context.WithoutCancel(ctx))
	released := make(chan struct{})
	go func() {
		defer close(released)
		defer lockTx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
		for ctx.Err() == nil {
			var orphans, waiting int64
			err := watcher.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pid = $1),
				count(*) FILTER (WHERE pid <> $1 AND wait_event_type = 'Lock')
				FROM pg_stat_activity WHERE datname = current_database()`, orphanPID).Scan(&orphans, &waiting)
			if err != nil || orphans == 0 || waiting > 0 {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	res, err := r.Apply(ctx, topo, &RunOptions{Duration: 2 * time.Second, RateLimit: 30, StatusEvery: time.Second})
	<-released
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	waitFor(t, func() bool {
		return pgtest.QueryInt(t, spoke, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, orphanPID) == 0
	})
	if !res.Run.OK {
		t.Errorf("run not OK: %v", res.Run.Report.Problems())
	}
	assertConverged(t, pg.DSN, []string{"votr_0", "votr_1", "votr_2"}, res.Run.Committed)
	if !strings.Contains(out.String(), "ending a session casting ballots left behind by a killed process") {
		t.Errorf("the orphan's end was not logged:\n%s", out)
	}

	// A live process of the deployment casting ballots in spoke 1.
	live := exec.CommandContext(ctx, "sleep", "300")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Process.Kill(); _ = live.Wait() })
	cfg.RuntimeParams["application_name"] = fmt.Sprintf("%s %s pid %d", workersPrefix, st.Deployment, live.Process.Pid)
	other, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.WithoutCancel(ctx))
	_, err = r.Apply(ctx, topo, &RunOptions{Duration: 2 * time.Second, RateLimit: 30})
	if err == nil || !strings.Contains(err.Error(), "another votr process of this deployment casts ballots there") ||
		!strings.Contains(err.Error(), fmt.Sprint(other.PID())) {
		t.Fatalf("apply beside a live process's workers: %v, want a refusal naming its session", err)
	}
	if n := pgtest.QueryInt(t, spoke, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, other.PID()); n != 1 {
		t.Errorf("the live process's session was ended")
	}
}
