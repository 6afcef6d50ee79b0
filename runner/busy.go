package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
	"github.com/votr-dev/votr/schema"
)

// slotFreeWait is how long a run waits for a feed's slot to be released
// before it calls the feed taken: a process killed a moment ago leaves its
// walsender holding the slot until the server notices the closed socket.
const slotFreeWait = 5 * time.Second

// feedsFree fails, naming the holder, when another process (a second apply
// with its own state dir, or a `votr sink`) already streams one of the
// feeds: two sinks on one feed would fight over its slot, and two sets of
// workers would make the counts of both runs wrong. A walsender left by a
// killed process of this deployment is ended instead (see endStale).
func (r *Runner) feedsFree(ctx context.Context, feeds []*feedRun) error {
	busy, err := r.untilFree(ctx, "waiting for replication slots in use to be released", func() ([]string, error) {
		return r.busySlots(ctx, feeds)
	})
	if err != nil || len(busy) == 0 {
		return err
	}
	return fmt.Errorf("%s; stop that process first (or run apply with --no-sinks and leave the feeds to it)", strings.Join(busy, "; "))
}

// untilFree polls list (what is in use by another process) until it is
// empty, for at most slotFreeWait, logging waiting while it is not; it
// returns what is still in use then.
func (r *Runner) untilFree(ctx context.Context, waiting string, list func() ([]string, error)) ([]string, error) {
	deadline := time.Now().Add(slotFreeWait)
	for {
		busy, err := list()
		if err != nil || len(busy) == 0 || time.Now().After(deadline) {
			return busy, err
		}
		r.log.Info(waiting, "in use by", strings.Join(busy, "; "))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// busySlots describes the feeds whose slot is in use by a live process. An
// unreachable source is not an error here: the sinks wait for it like for
// any outage.
func (r *Runner) busySlots(ctx context.Context, feeds []*feedRun) ([]string, error) {
	var busy []string
	for _, f := range feeds {
		conn, err := connect(ctx, f.srcDSN)
		if err != nil {
			continue
		}
		slots, err := listSlots(ctx, conn)
		if err != nil {
			conn.Close(context.WithoutCancel(ctx))
			continue
		}
		name := schema.Slot(f.feed.Source.Database, f.feed.Target.ID)
		for _, s := range slots {
			if (s.Name != name && (f.shared == "" || s.Name != f.shared)) || !s.Active || r.endStale(ctx, conn, s, f.feed.Source.ServerKey()) {
				continue
			}
			busy = append(busy, fmt.Sprintf("feed %s already runs elsewhere: the replication slot %s it reads on %s is in use by %s",
				f.feed, s.Name, f.feed.Source.ServerKey(), s.Holder()))
		}
		conn.Close(context.WithoutCancel(ctx))
	}
	return busy, nil
}

// endStale ends the walsender holding slot s when it serves a process of
// this deployment on this machine that no longer exists (killed: the server
// has not noticed its connection is gone, for instance behind a proxy or a
// silent network, and would keep the slot until wal_sender_timeout). It
// reports whether it did; any other holder is left alone.
func (r *Runner) endStale(ctx context.Context, conn *pgx.Conn, s plan.Slot, server string) bool {
	pid, ok := r.deadProcess(streamPrefix, s.Application, s.Client)
	if !ok {
		return false
	}
	r.log.Warn("ending a replication connection left behind by a killed process of this deployment",
		"slot", s.Name, "server", server, "walsender_pid", s.ActivePID, "process_pid", pid)
	var ended bool
	if err := conn.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, s.ActivePID).Scan(&ended); err != nil {
		r.log.Warn("could not end the stale replication connection; waiting for the server to notice it", "slot", s.Name, "err", err)
		return false
	}
	return ended
}

// workersFree returns once no other process of this deployment has a
// session casting ballots in the region's database, and fails, naming it,
// when a live one still has after slotFreeWait. A session left by a killed
// process is ended first, and waited for: one may still commit a
// transaction its process sent before it died (its whole pipeline had
// arrived, and it was waiting for a row lock), and a run that counted the
// region's ballots before that commit would call them doubled.
func (r *Runner) workersFree(ctx context.Context, pool *pgxpool.Pool, reg config.Region) error {
	st, err := r.loadState()
	if err != nil || st.Deployment == "" {
		return err
	}
	busy, err := r.untilFree(ctx, "waiting for another process's sessions casting ballots to end", func() ([]string, error) {
		return r.busyWorkers(ctx, pool, st.Deployment)
	})
	if err != nil || len(busy) == 0 {
		return err
	}
	return fmt.Errorf("region %s: another votr process of this deployment casts ballots there (%s); stop it first (a session from another machine whose process is gone ends when the server notices, or with SELECT pg_terminate_backend(pid))", reg.Label(), strings.Join(busy, "; "))
}

// busyWorkers ends the worker sessions of killed processes of deployment in
// pool's database, waiting for each to exit, and describes those of live
// processes other than this one.
func (r *Runner) busyWorkers(ctx context.Context, pool *pgxpool.Pool, deployment string) ([]string, error) {
	rows, err := pool.Query(ctx, `SELECT pid, application_name, coalesce(host(client_addr), '') FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND starts_with(application_name, $1)`,
		workersPrefix+" "+deployment+" ")
	if err != nil {
		return nil, fmt.Errorf("list the sessions casting ballots: %w", err)
	}
	type session struct {
		pid         int
		app, client string
	}
	sessions, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (session, error) {
		var s session
		return s, row.Scan(&s.pid, &s.app, &s.client)
	})
	if err != nil {
		return nil, fmt.Errorf("list the sessions casting ballots: %w", err)
	}
	own := r.processName(workersPrefix)
	var busy []string
	for _, s := range sessions {
		if s.app == own {
			continue // this process's own pool
		}
		if pid, ok := r.deadProcess(workersPrefix, s.app, s.client); ok {
			r.log.Warn("ending a session casting ballots left behind by a killed process of this deployment",
				"backend_pid", s.pid, "process_pid", pid)
			// With a timeout, pg_terminate_backend waits for the session
			// to exit: a commit it had begun is then either done or not.
			if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend($1, 10000)`, s.pid); err != nil {
				return nil, fmt.Errorf("end the session casting ballots left by killed process %d: %w", pid, err)
			}
			continue
		}
		who := fmt.Sprintf("session pid %d, application_name %q", s.pid, s.app)
		if s.client != "" {
			who += ", from " + s.client
		}
		busy = append(busy, who)
	}
	return busy, nil
}

// deadProcess reports the process id named by application, when it is a
// process of this deployment on this machine that is gone. Such names are
// processName's ("PREFIX DEPLOYMENT pid N"); the connection must come from
// this machine (a loopback address or a Unix socket, client "") for the pid
// to mean anything here.
func (r *Runner) deadProcess(prefix, application, client string) (int, bool) {
	f := strings.Fields(application)
	if len(f) != 4 || f[0] != prefix || f[2] != "pid" {
		return 0, false
	}
	st, err := r.loadState()
	if err != nil || f[1] != st.Deployment {
		return 0, false
	}
	if client != "" && client != "127.0.0.1" && client != "::1" {
		return 0, false
	}
	pid, err := strconv.Atoi(f[3])
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return 0, false
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		return 0, false // alive (or not ours to signal): a live process
	}
	return pid, true
}
