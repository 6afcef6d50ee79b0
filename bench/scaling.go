package main

import (
	"context"
	"fmt"
	"time"
)

// Part 4, scaling: the same topology with 1, 2, 4 and 8 spokes, each on a
// fresh server, one worker per spoke casting ballots as fast as it can
// (no pause). It shows how throughput and lag change with the number of
// feeds sharing the machine, and whether the feeds keep up.

type scalingOptions struct {
	spokes               string
	candidates           int
	duration             time.Duration
	probeEvery, lagBound time.Duration
}

func runScaling(ctx context.Context, e *env, o scalingOptions) ([]string, error) {
	counts, err := parseCounts(o.spokes)
	if err != nil {
		return nil, err
	}
	full := pace{label: "full speed", workers: 1, cfg: workloadConfig(0)}
	var ws []window
	for _, n := range counts {
		e.progress("scaling: %d spoke(s), %d sinks", n, 2*n)
		t, err := startTopology(ctx, e, fmt.Sprintf("scaling-%d", n), n, o.candidates)
		if err != nil {
			return nil, err
		}
		w, err := t.runWindow(ctx, full, o.duration, o.probeEvery)
		t.stop()
		if err != nil {
			return nil, fmt.Errorf("%d spokes: %w", n, err)
		}
		e.progress("  %s", w.line(o.lagBound))
		if w.failed != "" {
			e.progress("  %s: %s", w.failed, w.detail)
		}
		ws = append(ws, w)
	}

	out := e.out
	fmt.Fprintf(out, "\n## 4. Scaling: one worker per spoke at full speed (no pause), %s per run, one server\n\n", o.duration)
	t := &table{head: []string{"spokes", "feeds", "txn/s", "ballots/s", "spoke→hub ms p50/p95/p99", "spoke→hub→spoke ms p50/p95/p99",
		"converged ms", "kept up", "CPU busy"}}
	var sum string
	for i, w := range ws {
		ok, why := w.sustained(o.lagBound)
		e2e := "–"
		if w.spokes > 1 {
			e2e = w.all.spokeSpoke.ms()
		}
		busy := 0.0
		for _, v := range w.cpu {
			busy += v
		}
		t.add(fmt.Sprint(w.spokes), fmt.Sprint(2*w.spokes), thousands(w.txnRate()), thousands(w.ballotRate()),
			w.all.spokeHub.ms(), e2e, w.convText(), fmt.Sprintf("%v (%s)", ok, why), fmt.Sprintf("%.0f%%", 100*busy))
		if i > 0 {
			sum += ", "
		}
		sum += fmt.Sprintf("%d spokes %s ballots/s (p99 end-to-end %s ms)", w.spokes, thousands(w.ballotRate()), msec(w.endToEnd(w.all).pct(99)))
	}
	t.print(out)
	fmt.Fprintf(out, "\n\"kept up\" uses the steady-state rule (p95 end-to-end lag after the first second, and the drain, ≤ %s).\n", o.lagBound)
	out2 := []string{"scaling at full worker speed: " + sum}
	for _, w := range ws {
		if w.failed != "" {
			out2 = append(out2, fmt.Sprintf("PROBLEM, scaling with %d spokes: %s: %s", w.spokes, w.failed, w.detail))
		}
	}
	return out2, nil
}
