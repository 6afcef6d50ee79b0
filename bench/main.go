// Command bench measures votr side by side with PostgreSQL's own logical
// replication on this machine: catch-up on a backlog, steady state of a
// hub-and-spoke topology, convergence after the last write, scaling with
// the number of spokes, and the memory of one sink. It starts and removes
// its own PostgreSQL servers. `make bench` runs it with the defaults (the
// full run, ~10–15 minutes on 2 cores); flags pick parts and sizes.
//
// Figures that compare are ratios against baselines measured in the same
// invocation, so they hold on a noisy machine. The last three lines printed
// are the catch-up ratios (sink/native, sink/native with synchronous
// commit, sink/decode ceiling).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/votr-dev/votr/script"
)

// env is what every part of the bench shares.
type env struct {
	lab     *lab
	program *script.Program
	log     *slog.Logger // warnings and errors of sinks and workers
	out     io.Writer    // the report
	started time.Time
	// plotDir receives the pictures ("": none).
	plotDir string
	// contention tallies deadlocks and sink lock retries over every
	// topology the run starts.
	contention *contention
	// layout places the regions of the steady and scaling topologies.
	layout layout
	// sharedHubSlot runs a hub's outbound feeds through one slot
	// (sink.Fanout) instead of a slot each.
	sharedHubSlot bool
}

// where says where the regions live and how the hub's feeds read it, for
// the report's headings.
func (e *env) where() string {
	if e.sharedHubSlot {
		return e.layout.where() + ", the hub's outbound feeds through one slot"
	}
	return e.layout.where()
}

// progress tells the person waiting what is going on (stderr).
func (e *env) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(e.started).Seconds(), fmt.Sprintf(format, args...))
}

type options struct {
	parts         string
	scriptPath    string
	candidates    int
	verbose       bool
	plots         string
	layout        layout
	sharedHubSlot bool
	// profile receives a CPU profile of this whole process ("": none).
	profile string

	catchup catchupOptions
	steady  steadyOptions
	scaling scalingOptions
	memory  memoryOptions
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == childCommand {
		if err := childSink(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench child sink:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.StringVar(&o.parts, "parts", "catchup,steady,scaling,memory", "parts to run, comma-separated: catchup, steady (with convergence), scaling, memory")
	flag.StringVar(&o.scriptPath, "script", "", "merge script (default: scripts/votr.ts of this module)")
	flag.IntVar(&o.candidates, "candidates", 128, "candidates seeded in every region")
	flag.BoolVar(&o.verbose, "v", false, "log sinks and workers at info level (default: warnings only)")
	flag.StringVar(&o.profile, "process-cpuprofile", "", "write a CPU profile of this whole process (sinks and workers of every part run) to this file")
	o.layout = oneServer
	flag.Var(&o.layout, "layout", "steady and scaling: where the regions' databases live: one-server (all on one PostgreSQL server, as with connect: local) or per-region (a server each, as with local:NAME per region, or one cluster per region)")
	flag.BoolVar(&o.sharedHubSlot, "shared-hub-slot", false, "steady and scaling: the hub's outbound feeds read one replication slot (sink.Fanout, as votr apply with sink.sharedHubSlot: true) instead of a slot each")
	flag.StringVar(&o.plots, "plots", filepath.Join("docs", "bench"), "directory for the pictures (lag.png from steady, scaling.png from scaling); relative to the module root; \"\" for none")

	flag.IntVar(&o.catchup.txns, "catchup-txns", 40000, "catch-up: source transactions in each round's backlog (5.5 ballots each on average)")
	flag.IntVar(&o.catchup.clients, "catchup-clients", 4, "catch-up: connections writing the backlog")
	flag.IntVar(&o.catchup.rounds, "catchup-rounds", 5, "catch-up: rounds (a new backlog each; figures are medians)")
	flag.StringVar(&o.catchup.cpuprofile, "cpuprofile", "", "catch-up: write a CPU profile of the sink's first run to this file and print its top 10")

	flag.IntVar(&o.steady.spokes, "spokes", 3, "steady state: spokes around the hub")
	flag.DurationVar(&o.steady.duration, "steady-duration", 60*time.Second, "steady state: length of the run at the original pace")
	flag.DurationVar(&o.steady.step, "step-duration", 10*time.Second, "steady state: length of each step of the search for the sustained pace")
	flag.IntVar(&o.steady.searchSteps, "search-steps", 6, "steady state: at most this many steps in the search for the sustained pace")
	flag.IntVar(&o.steady.workers, "search-workers", 1, "steady state: workers per spoke during the search (more workers contend for the same totals rows)")
	flag.Float64Var(&o.steady.searchStart, "search-start", 50, "steady state: first rate of the search, transactions per second per spoke (doubled while sustained, halved while not, then bisected)")
	flag.DurationVar(&o.steady.lagBound, "lag-bound", time.Second, "a pace is sustained while, after the first second, p95 spoke→hub→spoke lag ≤ this and the regions converge ≤ this after the last write")
	flag.DurationVar(&o.steady.probeEvery, "probe-every", 100*time.Millisecond, "lag probes: one marker ballot per spoke this often (at most 30 per second in all: beyond 3 spokes each probes less often)")

	flag.StringVar(&o.scaling.spokes, "scaling-spokes", "1,2,4,8", "scaling: spoke counts to run")
	flag.DurationVar(&o.scaling.duration, "scaling-duration", 10*time.Second, "scaling: length of each step of a count's search for the sustained pace")
	flag.IntVar(&o.scaling.steps, "scaling-steps", 4, "scaling: at most this many steps in each count's search")
	flag.StringVar(&o.scaling.perRegion, "scaling-per-region", "8", "scaling: with -layout one-server, spoke counts searched once more with a server per region (\"\" for none)")
	flag.StringVar(&o.scaling.sharedHub, "scaling-shared-hub", "8", "scaling: without -shared-hub-slot, spoke counts searched once more with the hub's outbound feeds through one slot (\"\" for none)")
	flag.StringVar(&o.scaling.perRegionSharedHub, "scaling-per-region-shared-hub", "8", "scaling: with -layout one-server and without -shared-hub-slot, spoke counts searched once more with a server per region and the hub's outbound feeds through one slot (\"\" for none)")

	flag.IntVar(&o.memory.rows, "memory-rows", 1_000_000, "memory: ballots in the one large source transaction")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./bench [flags]\n\n%s\n\nflags:\n", strings.TrimSpace(usage))
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q; every setting is a flag (see -h)\n", flag.Arg(0))
		os.Exit(2)
	}
	o.steady.probeEvery = max(o.steady.probeEvery, 10*time.Millisecond)
	o.catchup.candidates, o.steady.candidates, o.scaling.candidates, o.memory.candidates = o.candidates, o.candidates, o.candidates, o.candidates
	o.scaling.probeEvery, o.scaling.lagBound, o.scaling.searchStart = o.steady.probeEvery, o.steady.lagBound, o.steady.searchStart
	o.scaling.heading, o.scaling.label = "4. Scaling", "scaling"

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

const usage = `
Measures votr against PostgreSQL's native logical replication on this machine.
It starts its own PostgreSQL servers (under the system temp directory) and
removes them at the end. Parts: catchup (headline: native vs sink vs decode
ceiling, with asynchronous and synchronous target commits), steady (hub + 3
spokes at the original pace, then the highest pace the feeds sustain, with
lag percentiles and convergence time), scaling (1, 2, 4, 8 spokes, then 8
again with a server per region), memory (peak RSS of a sink applying one
1,000,000-row transaction, and idle).`

func run(ctx context.Context, o options) error {
	parts := map[string]bool{}
	for _, p := range strings.Split(o.parts, ",") {
		p = strings.TrimSpace(p)
		switch p {
		case "catchup", "steady", "scaling", "memory":
			parts[p] = true
		case "":
		default:
			return fmt.Errorf("-parts: unknown part %q; choose from catchup, steady, scaling, memory", p)
		}
	}
	if err := o.validate(); err != nil {
		return err
	}
	if o.profile != "" {
		f, err := os.Create(o.profile)
		if err != nil {
			return fmt.Errorf("-process-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-process-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	path := o.scriptPath
	if path == "" {
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		path = filepath.Join(root, "scripts", "votr.ts")
	}
	prog, err := script.Compile(path)
	if err != nil {
		return fmt.Errorf("merge script: %w", err)
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	l, err := newLab(logger.With("component", "localpg"))
	if err != nil {
		return err
	}
	defer func() {
		if err := l.close(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: cleaning up servers:", err)
		}
	}()
	e := &env{lab: l, program: prog, log: logger, out: os.Stdout, started: time.Now(), contention: &contention{}, layout: o.layout, sharedHubSlot: o.sharedHubSlot}
	if o.plots != "" {
		e.plotDir = o.plots
		if !filepath.IsAbs(e.plotDir) {
			root, err := moduleRoot()
			if err != nil {
				return fmt.Errorf("-plots: %w", err)
			}
			e.plotDir = filepath.Join(root, e.plotDir)
		}
	}
	e.header(ctx, o)

	var summary []string
	var took []string
	timed := func(name string, f func() error) error {
		began := time.Now()
		err := f()
		d := time.Since(began)
		e.progress("%s took %.0f s", name, d.Seconds())
		took = append(took, fmt.Sprintf("%s %.0f s", name, d.Seconds()))
		return err
	}
	cu := catchupSummary{math.NaN(), math.NaN(), math.NaN(), math.NaN()}
	if parts["catchup"] {
		if err := timed("catch-up", func() (err error) { cu, err = runCatchup(ctx, e, o.catchup); return err }); err != nil {
			return fmt.Errorf("catch-up: %w", err)
		}
	}
	var steady steadyResult
	if parts["steady"] {
		if err := timed("steady", func() (err error) { steady, err = runSteady(ctx, e, o.steady); return err }); err != nil {
			return fmt.Errorf("steady state: %w", err)
		}
		summary = append(summary, steady.summary...)
	}
	if parts["scaling"] {
		var s []string
		if err := timed("scaling", func() (err error) { s, err = runScaling(ctx, e, o.scaling, steady.sustainedTxns); return err }); err != nil {
			return fmt.Errorf("scaling: %w", err)
		}
		summary = append(summary, s...)
		// The same search again in other layouts, each with its own
		// counts ("": skipped); scaling.png stays the main curve. On one
		// server every walsender reads every region's WAL (bench/wal.go),
		// a cost a deployment with a server per region does not pay; one
		// hub slot (sink.Fanout, as votr apply with sink.sharedHubSlot)
		// has one walsender decode the hub's WAL for all spokes.
		for _, v := range []struct {
			counts               string
			ok                   bool
			layout               layout
			sharedHubSlot        bool
			part, heading, label string
		}{
			{o.scaling.perRegion, o.layout == oneServer, perRegion, e.sharedHubSlot, "scaling per region",
				"4b. Scaling, a server per region", "scaling, a server per region"},
			{o.scaling.sharedHub, !e.sharedHubSlot, e.layout, true, "scaling with one hub slot",
				"4c. Scaling, one outbound slot at the hub", "scaling, the hub's outbound feeds through one slot"},
			{o.scaling.perRegionSharedHub, o.layout == oneServer && !e.sharedHubSlot, perRegion, true, "scaling per region with one hub slot",
				"4d. Scaling, a server per region and one outbound slot at the hub", "scaling, a server per region and one hub slot"},
		} {
			if v.counts == "" || !v.ok {
				continue
			}
			ve := *e
			ve.layout, ve.sharedHubSlot, ve.plotDir = v.layout, v.sharedHubSlot, ""
			vo := o.scaling
			vo.spokes, vo.heading, vo.label = v.counts, v.heading, v.label
			if err := timed(v.part, func() (err error) { s, err = runScaling(ctx, &ve, vo, steady.sustainedTxns); return err }); err != nil {
				return fmt.Errorf("%s: %w", v.label, err)
			}
			summary = append(summary, s...)
		}
	}
	summary = append(summary, e.contention.lines()...)
	if parts["memory"] {
		var s []string
		if err := timed("memory", func() (err error) { s, err = runMemory(ctx, e, o.memory); return err }); err != nil {
			return fmt.Errorf("memory: %w", err)
		}
		summary = append(summary, s...)
	}
	summary = append(summary, "time per part: "+strings.Join(took, ", "))

	fmt.Fprintf(e.out, "\n## Summary (%.0f s in all; load average at the end: %s)\n\n", time.Since(e.started).Seconds(), loadAverage())
	if parts["catchup"] {
		fmt.Fprintf(e.out, "catch-up (rows/s, median of per-round ratios): sink/native %.2f (target ≥ 1.2), sink/native synchronous %.2f (target ≥ 4), sink/ceiling %.2f (target ≥ 0.9), sink/pglogrepl reader %.2f\n",
			cu.catchUp, cu.synchronous, cu.ceiling, cu.reader)
	}
	for _, s := range summary {
		fmt.Fprintln(e.out, s)
	}
	fmt.Fprintln(e.out)
	fmt.Fprintf(e.out, "sink/native catch-up ratio: %s\n", ratio(cu.catchUp))
	fmt.Fprintf(e.out, "sink/native synchronous ratio: %s\n", ratio(cu.synchronous))
	fmt.Fprintf(e.out, "sink/ceiling ratio: %s\n", ratio(cu.ceiling))
	return nil
}

func ratio(x float64) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "n/a (catch-up not run)"
	}
	return fmt.Sprintf("%.2f", x)
}

func (o options) validate() error {
	var errs []error
	check := func(ok bool, msg string) {
		if !ok {
			errs = append(errs, errors.New(msg))
		}
	}
	check(o.candidates >= 1, "-candidates must be at least 1")
	check(o.catchup.txns >= 1, "-catchup-txns must be at least 1")
	check(o.catchup.clients >= 1, "-catchup-clients must be at least 1")
	check(o.catchup.rounds >= 1, "-catchup-rounds must be at least 1")
	check(o.steady.spokes >= 1, "-spokes must be at least 1")
	check(o.steady.duration >= time.Second, "-steady-duration must be at least 1s")
	check(o.steady.step >= 2*time.Second, "-step-duration must be at least 2s (the first second is warm-up)")
	check(o.steady.searchSteps >= 1, "-search-steps must be at least 1")
	check(o.scaling.steps >= 1, "-scaling-steps must be at least 1")
	check(o.steady.workers >= 1, "-search-workers must be at least 1")
	check(o.steady.searchStart >= 1, "-search-start must be at least 1")
	check(o.steady.lagBound > 0, "-lag-bound must be positive")
	check(o.scaling.duration >= 2*time.Second, "-scaling-duration must be at least 2s (the first second is warm-up)")
	check(o.memory.rows >= 1, "-memory-rows must be at least 1")
	if _, err := parseCounts(o.scaling.spokes); err != nil {
		errs = append(errs, fmt.Errorf("-scaling-spokes: %w", err))
	}
	for flag, counts := range map[string]string{"-scaling-per-region": o.scaling.perRegion, "-scaling-shared-hub": o.scaling.sharedHub,
		"-scaling-per-region-shared-hub": o.scaling.perRegionSharedHub} {
		if _, err := parseCounts(counts); counts != "" && err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flag, err))
		}
	}
	return errors.Join(errs...)
}

// parseCounts reads "1,2,4,8".
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 30 {
			return nil, fmt.Errorf("%q: want comma-separated spoke counts between 1 and 30, e.g. 1,2,4,8", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// moduleRoot finds the directory of go.mod from the working directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("cannot find the votr module (go.mod) from %s: run the bench from the checkout, or pass -script", dir)
		}
	}
}

// header prints the machine and the command.
func (e *env) header(ctx context.Context, o options) {
	pg := "?"
	if out, err := exec.CommandContext(ctx, filepath.Join(e.lab.bin, "postgres"), "--version").Output(); err == nil {
		pg = strings.TrimSpace(string(out))
	}
	fmt.Fprintf(e.out, "# votr benchmark, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(e.out, "machine: %d CPUs (%s), %s; %s\n", runtime.NumCPU(), machine(), runtime.Version(), pg)
	fmt.Fprintf(e.out, "command: bench %s\n", strings.Join(os.Args[1:], " "))
	fmt.Fprintf(e.out, "load average at start: %s\n", loadAverage())
	fmt.Fprintf(e.out, "servers, sinks, workers and this program all share the machine's CPUs\n")
}
