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
	deadline := time.Now().Add(slotFreeWait)
	for {
		busy, err := r.busySlots(ctx, feeds)
		if err != nil || len(busy) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s; stop that process first (or run apply with --no-sinks and leave the feeds to it)", strings.Join(busy, "; "))
		}
		r.log.Info("waiting for replication slots in use to be released", "slots", strings.Join(busy, "; "))
		select {
		case <-ctx.Done():
			return ctx.Err()
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
			if s.Name != name || !s.Active || r.endStale(ctx, conn, s, f.feed.Source.ServerKey()) {
				continue
			}
			busy = append(busy, fmt.Sprintf("feed %s already runs elsewhere: its replication slot %s on %s is in use by %s",
				f.feed, name, f.feed.Source.ServerKey(), s.Holder()))
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
	pid, ok := r.staleHolder(s)
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

// staleHolder reports the process id of a slot's holder when it is a
// process of this deployment on this machine that is gone. The holder is
// named by its application_name (streamName: "votr-sink DEPLOYMENT pid
// N"); its connection must come from this machine (a loopback address or
// a Unix socket) for the pid to mean anything here.
func (r *Runner) staleHolder(s plan.Slot) (int, bool) {
	f := strings.Fields(s.Application)
	if len(f) != 4 || f[0] != streamPrefix || f[2] != "pid" {
		return 0, false
	}
	st, err := r.loadState()
	if err != nil || f[1] != st.Deployment {
		return 0, false
	}
	if s.Client != "" && s.Client != "127.0.0.1" && s.Client != "::1" {
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
