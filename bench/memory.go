package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/script"
	"github.com/votr-dev/votr/sink"
)

// Part 5, memory: the peak resident set of one sink, idle and while it
// applies a single source transaction of a million rows. The sink runs in
// a child process (this binary, re-run with a hidden subcommand) so that
// its peak RSS (VmHWM in /proc/<pid>/status) is its own.

const childCommand = "__sink"

type memoryOptions struct {
	rows       int
	candidates int
}

// childRun is what one child sink did.
type childRun struct {
	peak, rss int64
	elapsed   time.Duration // from start to caught up
	rows      int64
}

func runMemory(ctx context.Context, e *env, o memoryOptions) ([]string, error) {
	e.progress("memory: one sink in a child process; idle, then one transaction of %s ballots", thousands(float64(o.rows)))
	srv, err := e.lab.server(ctx, "memory")
	if err != nil {
		return nil, err
	}
	defer e.lab.drop(context.WithoutCancel(ctx), srv)
	src, err := createRegion(ctx, srv, "votr_1", 1, max(o.candidates, 1))
	if err != nil {
		return nil, err
	}
	dst, err := createRegion(ctx, srv, "votr_0", 0, max(o.candidates, 1))
	if err != nil {
		return nil, err
	}
	if err := createSlot(ctx, src.dsn, schema.Slot(src.db, dst.id)); err != nil {
		return nil, err
	}
	if err := addFeed(ctx, dst.dsn, schema.FeedName(src.id, dst.id)); err != nil {
		return nil, err
	}

	lsn, err := currentLSN(ctx, src.dsn)
	if err != nil {
		return nil, err
	}
	idle, err := runChild(ctx, e, src, dst, lsn, 3*time.Second)
	if err != nil {
		return nil, fmt.Errorf("idle sink: %w", err)
	}
	e.progress("  idle sink: peak RSS %s", mib(idle.peak))

	start := time.Now()
	if err := bigTransaction(ctx, src.dsn, o.rows); err != nil {
		return nil, err
	}
	e.progress("  wrote one transaction of %s ballots in %.1f s", thousands(float64(o.rows)), time.Since(start).Seconds())
	if lsn, err = currentLSN(ctx, src.dsn); err != nil {
		return nil, err
	}
	big, err := runChild(ctx, e, src, dst, lsn, 0)
	if err != nil {
		return nil, fmt.Errorf("large transaction: %w", err)
	}
	want, err := digest(ctx, src.dsn)
	if err != nil {
		return nil, err
	}
	got, err := digest(ctx, dst.dsn)
	if err != nil {
		return nil, err
	}
	if got != want {
		return nil, fmt.Errorf("after the large transaction the target differs from the source:\n  source %s\n  target %s", want, got)
	}
	e.progress("  large transaction: peak RSS %s, applied in %.1f s (target identical)", mib(big.peak), big.elapsed.Seconds())

	out := e.out
	fmt.Fprintf(out, "\n## 5. Memory of one sink (child process, VmHWM)\n\n")
	t := &table{head: []string{"case", "peak RSS", "RSS at the end", "time to catch up", "rows applied"}}
	t.add("idle (connected, nothing to apply, 3 s)", mib(idle.peak), mib(idle.rss), secs(idle.elapsed), fmt.Sprint(idle.rows))
	t.add(fmt.Sprintf("one source transaction of %s ballots + 1 totals update", thousands(float64(o.rows))), mib(big.peak), mib(big.rss),
		secs(big.elapsed), thousands(float64(big.rows)))
	t.print(out)
	fmt.Fprintf(out, "\nTime to catch up runs from the child's start (connections included) to the sink having applied everything;\nthe target is then identical to the source.\n")
	return []string{fmt.Sprintf("memory: idle sink peak RSS %s; applying one %s-row transaction peak RSS %s (target < 150 MiB)",
		mib(idle.peak), thousands(float64(o.rows+1)), mib(big.peak))}, nil
}

// bigTransaction commits one vote of n ballots for one candidate.
func bigTransaction(ctx context.Context, dsn string, n int) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["synchronous_commit"] = "off"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	cand := schema.Candidates(1)[0].ID
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE public.totals SET total = total + $1 WHERE candidate = $2`, n, cand); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO public.ballots (candidate) SELECT $1::uuid FROM generate_series(1, $2::int)`, cand, n)
		return err
	})
}

// runChild runs a sink for src → dst in a child process until it has
// applied the source up to lsn, waits hold, and returns its memory.
func runChild(ctx context.Context, e *env, src, dst region, lsn pglogrepl.LSN, hold time.Duration) (childRun, error) {
	var r childRun
	exe, err := os.Executable()
	if err != nil {
		return r, err
	}
	cmd := exec.CommandContext(ctx, exe, childCommand,
		"-source-dsn", src.dsn, "-source-db", src.db, "-source-id", fmt.Sprint(src.id),
		"-target-dsn", dst.dsn, "-target-db", dst.db, "-target-id", fmt.Sprint(dst.id),
		"-script", e.program.Path, "-lsn", lsn.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return r, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		return r, fmt.Errorf("child sink ended before catching up (%v)", sc.Err())
	}
	var ms int64
	if _, err := fmt.Sscanf(sc.Text(), "caught-up %d %d", &r.rows, &ms); err != nil {
		return r, fmt.Errorf("child sink said %q", sc.Text())
	}
	r.elapsed = time.Duration(ms) * time.Millisecond
	sleepCtx(ctx, hold)
	if r.peak, r.rss, err = procMemory(cmd.Process.Pid); err != nil {
		return r, err
	}
	return r, nil
}

// childSink is the child process: it runs one sink until it has applied
// the source up to -lsn, says so on stdout, and stops when stdin closes.
func childSink(args []string) error {
	fs := flag.NewFlagSet(childCommand, flag.ContinueOnError)
	cfg := sink.Config{Options: sink.DefaultOptions()}
	var scriptPath, lsnText string
	fs.StringVar(&cfg.SourceDSN, "source-dsn", "", "")
	fs.StringVar(&cfg.SourceDB, "source-db", "", "")
	fs.IntVar(&cfg.SourceID, "source-id", 0, "")
	fs.StringVar(&cfg.TargetDSN, "target-dsn", "", "")
	fs.StringVar(&cfg.TargetDB, "target-db", "", "")
	fs.IntVar(&cfg.TargetID, "target-id", 0, "")
	fs.StringVar(&scriptPath, "script", "", "")
	fs.StringVar(&lsnText, "lsn", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	lsn, err := pglogrepl.ParseLSN(lsnText)
	if err != nil {
		return fmt.Errorf("-lsn: %w", err)
	}
	if cfg.Program, err = script.Compile(scriptPath); err != nil {
		return err
	}
	s, err := sink.New(cfg)
	if err != nil {
		return err
	}
	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Minute)
	err = s.WaitCaughtUp(wctx, lsn)
	wcancel()
	if err != nil {
		cancel()
		return errors.Join(err, <-done, errors.New(s.Status().LastError))
	}
	fmt.Printf("caught-up %d %d\n", s.Status().Rows, time.Since(start).Milliseconds())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes it
	cancel()
	if err := <-done; err != nil && !strings.Contains(err.Error(), "context canceled") {
		return err
	}
	return nil
}
