package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// Part 4, scaling: the same topology with 1, 2, 4 and 8 spokes, each on a
// fresh server, one worker per spoke in the original's transaction shape.
// For every count it searches the sustained pace (as the steady part
// does, with fewer and shorter steps), so the curve compares what each
// topology keeps up with, not how far behind it falls at full speed.

type scalingOptions struct {
	spokes string
	// perRegion: spoke counts searched once more with a server per region
	// after a one-server scaling part ("": none).
	perRegion string
	// sharedHub: spoke counts searched once more with the hub's outbound
	// feeds through one slot ("": none).
	sharedHub string
	// perRegionSharedHub: the same with both ("": none).
	perRegionSharedHub string
	// heading and label name the pass in the report ("4. Scaling") and in
	// its summary lines ("scaling").
	heading, label       string
	candidates           int
	steps                int
	searchStart          float64 // per spoke, when no earlier result gives a start
	duration             time.Duration
	probeEvery, lagBound time.Duration
}

// scalingPoint is one spoke count's result.
type scalingPoint struct {
	spokes  int
	steps   []window
	best    int // index in steps of the sustained pace, -1: none
	bad     int // index of the first pace not sustained above it, -1: none
	elapsed time.Duration
}

func (p scalingPoint) bestWindow() *window {
	if p.best < 0 {
		return nil
	}
	return &p.steps[p.best]
}

// runScaling searches each spoke count's sustained pace. hintTxns is a
// total rate (transactions per second, all spokes) known to be sustained
// by a similar topology, or 0: each count starts its search at that total
// shared among its spokes, so that a flat curve costs few steps; after a
// count whose workers were the limit, at their rate per spoke instead.
func runScaling(ctx context.Context, e *env, o scalingOptions, hintTxns float64) ([]string, error) {
	counts, err := parseCounts(o.spokes)
	if err != nil {
		return nil, err
	}
	var pts []scalingPoint
	hintPerSpoke := 0.0 // set when the last count was limited by its workers
	for _, n := range counts {
		began := time.Now()
		start := scalingStart(o.searchStart, hintTxns, hintPerSpoke, n)
		e.progress("scaling: %d spoke(s), %d sinks; search from %s", n, 2*n, rateLabel(start))
		name := fmt.Sprintf("scaling-%d", n)
		if e.layout == perRegion {
			name = fmt.Sprintf("scaling-%d-per-region", n)
		}
		if e.sharedHubSlot {
			name += "-one-hub-slot"
		}
		t, err := startTopology(ctx, e, name, n, o.candidates)
		if err != nil {
			return nil, err
		}
		plan := searchPlan{start: start, floor: searchFloor, top: searchTop, steps: o.steps, closeEnough: closeEnough}
		steps, best, bad, err := t.searchPace(ctx, e, plan, 1, o.duration, o.probeEvery, o.lagBound)
		t.stop()
		if err != nil {
			return nil, fmt.Errorf("%d spokes: %w", n, err)
		}
		p := scalingPoint{spokes: n, steps: steps, best: best, bad: bad, elapsed: time.Since(began)}
		if b := p.bestWindow(); b != nil {
			hintTxns, hintPerSpoke = b.txnRate(), 0
			if perSpoke := b.txnRate() / float64(n); b.pace.rate > 0 && perSpoke < saturation*b.pace.rate {
				hintPerSpoke = perSpoke
			}
		}
		e.progress("scaling: %d spoke(s) done in %.0f s", n, p.elapsed.Seconds())
		pts = append(pts, p)
	}

	out := e.out
	fmt.Fprintf(out, "\n## %s: hub + N spokes, %s, one worker per spoke, the sustained pace searched per count (steps of %s, at most %d per count)\n\n",
		o.heading, e.where(), o.duration, o.steps)
	t := &table{head: []string{"spokes", "feeds", "steps", "sustained pace", "txn/s", "ballots/s", "spoke→hub ms p50/p95/p99",
		"spoke→hub→spoke ms p50/p95/p99", "converged ms", "first pace not sustained", "CPU busy", "part s"}}
	for _, p := range pts {
		row := []string{fmt.Sprint(p.spokes), fmt.Sprint(2 * p.spokes), fmt.Sprint(len(p.steps))}
		if b := p.bestWindow(); b != nil {
			e2e := "–"
			if b.spokes > 1 {
				e2e = b.all.spokeSpoke.ms()
			}
			row = append(row, b.pace.label, thousands(b.txnRate()), thousands(b.ballotRate()), b.all.spokeHub.ms(), e2e, b.convText())
		} else {
			row = append(row, "none", "–", "–", "–", "–", "–")
		}
		if p.bad >= 0 {
			x := p.steps[p.bad]
			_, why := x.sustained(o.lagBound)
			row = append(row, fmt.Sprintf("%s (%s)", x.pace.label, why))
		} else {
			row = append(row, "–")
		}
		busy := "–"
		if b := p.bestWindow(); b != nil {
			busy = fmt.Sprintf("%.0f%%", 100*cpuTotal(b.cpu))
		}
		t.add(append(row, busy, fmt.Sprintf("%.0f", p.elapsed.Seconds()))...)
	}
	t.print(out)

	fmt.Fprintf(out, "\nCPU at each count's sustained pace (share of all %d cores):\n\n", numCPU())
	ct := &table{head: append(append([]string{"spokes"}, cpuOrder...), "total")}
	for _, p := range pts {
		b := p.bestWindow()
		if b == nil {
			continue
		}
		row := []string{fmt.Sprint(p.spokes)}
		for _, k := range cpuOrder {
			row = append(row, fmt.Sprintf("%.0f%%", 100*b.cpu[k]))
		}
		ct.add(append(row, fmt.Sprintf("%.0f%%", 100*cpuTotal(b.cpu)))...)
	}
	ct.print(out)

	fmt.Fprintf(out, "\nCPU per worker transaction at each count's sustained pace (ms; each is applied in N regions, and the probes' CPU is in it):\n\n")
	kt := &table{head: []string{"spokes", "bench process", "sink sessions", "walsenders", "worker sessions", "total", "per region applied",
		"ballots/s the CPUs allow at this cost", "the same without the bench process and sink sessions", "sustained ballots/s", "WAL records", "records read by walsenders"}}
	for _, p := range pts {
		b := p.bestWindow()
		if b == nil {
			continue
		}
		c, ok := costOf(*b, numCPU())
		if !ok {
			continue
		}
		kt.add(fmt.Sprint(p.spokes), ms1(c.ms[cpuOrder[0]]), ms1(c.ms["sink sessions"]), ms1(c.ms["walsenders"]), ms1(c.ms["worker sessions"]),
			ms1(c.total), ms1(c.perRegion), thousands(c.ceiling), thousands(c.postgresCeiling), thousands(b.ballotRate()),
			fmt.Sprintf("%.0f", c.walRecords), thousands(c.walReads))
	}
	kt.print(out)
	fmt.Fprintf(out, "\n(WAL records and the records the walsenders read: per worker transaction, all servers. %s %s)\n", walReadNote, postgresCeilingNote)

	fmt.Fprintf(out, "\nSessions at each count's sustained pace, average number in each state:\n\n")
	var ws []*window
	for _, p := range pts {
		ws = append(ws, p.bestWindow())
	}
	printWaits(out, ws, func(x *window) string { return fmt.Sprintf("%d spokes", x.spokes) })

	fmt.Fprintf(out, "\nEvery step of the searches:\n\n")
	var all []window
	for _, p := range pts {
		all = append(all, p.steps...)
	}
	printWindows(out, all, o.lagBound, true)
	fmt.Fprintf(out, "\n\"sustained\" is the steady-state rule (p95 spoke→hub→spoke after the first second, and the convergence after the last write, ≤ %s).\n", o.lagBound)

	var lines []string
	var parts []string
	for _, p := range pts {
		if b := p.bestWindow(); b != nil {
			lines = append(lines, fmt.Sprintf("%s: %d spokes sustained %.0f ballots/s, converged in %.0f ms", o.label, p.spokes, b.ballotRate(), b.converge.Seconds()*1000))
		} else {
			lines = append(lines, fmt.Sprintf("%s: %d spokes sustained 0 ballots/s, converged in – ms (no step of the search was sustained)", o.label, p.spokes))
		}
		parts = append(parts, fmt.Sprintf("%d spokes %.0f s", p.spokes, p.elapsed.Seconds()))
		for _, w := range p.steps {
			if w.failed != "" {
				lines = append(lines, fmt.Sprintf("PROBLEM, %s with %d spokes at %s: %s: %s", o.label, w.spokes, w.pace.label, w.failed, w.detail))
			}
		}
	}
	lines = append(lines, o.label+" searches took: "+strings.Join(parts, ", "))

	if e.plotDir != "" {
		path := filepath.Join(e.plotDir, "scaling.png")
		title := fmt.Sprintf("Sustained pace by number of spokes, %s (%s)", e.where(), time.Now().UTC().Format("2006-01-02"))
		if err := plotScaling(path, title, scalingPlotPoints(pts)); err != nil {
			return nil, fmt.Errorf("scaling picture: %w", err)
		}
		fmt.Fprintf(out, "\nScaling picture: %s\n", path)
	}
	return lines, nil
}

// scalingStart is the first rate per spoke of a count's search: where a
// flat curve would be (the total the previous count sustained, hintTxns,
// shared among n spokes), or lower, the rate per spoke its workers reached
// when they were the limit (hintPerSpoke; a cap above what the workers
// reach is not a pace). Starting above the flat curve spent the searches'
// few steps halving down to it: 8 spokes after 4 whose workers reached 88
// transactions/s each started at 88, failed at 88, 44 and 22 and had no
// step left to bisect between 11 and 22. Without hints, the search's own
// start.
func scalingStart(searchStart, hintTxns, hintPerSpoke float64, n int) float64 {
	switch {
	case hintTxns > 0 && hintPerSpoke > 0:
		return max(searchFloor, roundRate(min(hintPerSpoke, hintTxns/float64(n))))
	case hintTxns > 0:
		return max(searchFloor, roundRate(hintTxns/float64(n)))
	case hintPerSpoke > 0:
		return max(searchFloor, roundRate(hintPerSpoke))
	}
	return searchStart
}

// scalingPlotPoints are the counts that sustained a pace.
func scalingPlotPoints(pts []scalingPoint) []scalePoint {
	var out []scalePoint
	for _, p := range pts {
		if b := p.bestWindow(); b != nil {
			out = append(out, scalePoint{spokes: p.spokes, ballots: b.ballotRate(), converge: b.converge})
		}
	}
	return out
}

// roundRate rounds a starting rate to a number worth reading in a label.
func roundRate(r float64) float64 {
	switch {
	case r >= 20:
		return float64(int(r + 0.5))
	default:
		return float64(int(r*2+0.5)) / 2
	}
}

// ms1 renders milliseconds with one decimal.
func ms1(ms float64) string { return fmt.Sprintf("%.1f", ms) }

func cpuTotal(shares map[string]float64) float64 {
	total := 0.0
	for _, k := range cpuOrder {
		total += shares[k]
	}
	return total
}
