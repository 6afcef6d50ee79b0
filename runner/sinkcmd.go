package runner

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
	"github.com/votr-dev/votr/sink"
)

// Sink runs the sink of one feed ("S:D"), or with "0:*" the hub's outbound
// feeds through their shared slot (sink.sharedHubSlot), until ctx is done
// or the interrupt channel closes, showing their status like apply does.
func (r *Runner) Sink(ctx context.Context, t *config.Topology, feedName, metricsAddr string) error {
	feeds, err := sinkFeeds(t, feedName)
	if err != nil {
		return err
	}
	src := feeds[0].Source
	dsns, err := r.regionDSNs(ctx, t, true)
	if err != nil {
		return err
	}
	runs := make([]*feedRun, len(feeds))
	for i, f := range feeds {
		runs[i] = &feedRun{feed: f, srcDSN: dsns[f.Source.ID], shared: plan.SharedSlotOf(t, f), retained: -1}
	}
	if err := r.feedsFree(ctx, runs); err != nil {
		return err
	}
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	_, stopMetrics, err := r.serveMetrics(metricsAddr, registry)
	if err != nil {
		return err
	}
	defer stopMetrics()
	sinks := make([]*sink.Sink, len(feeds))
	for i, f := range feeds {
		if sinks[i], err = sink.New(r.feedConfig(t, f, dsns[f.Source.ID], dsns[f.Target.ID], r.log, registry)); err != nil {
			return err
		}
		runs[i].sink = sinks[i]
	}
	run := sinks[0].Run
	if runs[0].shared != "" {
		fo, err := sink.NewFanout(runs[0].shared, sinks...)
		if err != nil {
			return err
		}
		run = fo.Run
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-r.opts.Interrupt:
			r.log.Info("interrupted: stopping the sink")
			stop()
		case <-runCtx.Done():
		}
	}()
	// One connection to the source for the status's slot readings.
	pcfg, err := pgxpool.ParseConfig(dsns[src.ID])
	if err != nil {
		return fmt.Errorf("region %s: %w", src.Label(), config.ScrubError(err, dsns[src.ID]))
	}
	pcfg.MaxConns = 1
	srcPool, err := pgxpool.NewWithConfig(runCtx, pcfg)
	if err != nil {
		return fmt.Errorf("region %s: %w", src.Label(), config.ScrubError(err, dsns[src.ID]))
	}
	defer srcPool.Close()
	view := func() ([]*regionRun, []*feedRun, map[int]*pgxpool.Pool) {
		return nil, runs, map[int]*pgxpool.Pool{src.ID: srcPool}
	}
	label := "sink " + plan.FeedLabel(feeds[0])
	if len(feeds) > 1 || feedName != feeds[0].String() {
		label = fmt.Sprintf("sinks of the hub's %d outbound feeds, through slot %s", len(feeds), runs[0].shared)
	}
	statusDone := make(chan struct{})
	go func() {
		defer close(statusDone)
		r.showStatus(runCtx, RunOptions{StatusEvery: 10 * time.Second}, view, t.Sink.SlotWarnBytes, func() string { return label })
	}()
	r.log.Info("sink running", "feeds", label)
	err = run(runCtx)
	stop()
	<-statusDone
	if r.opts.Console != nil {
		r.opts.Console.Keep()
	}
	return err
}

// sinkFeeds are the feeds `votr sink --feed NAME` runs: one, or with
// "0:*" the hub's outbound feeds, which then share a slot.
func sinkFeeds(t *config.Topology, name string) ([]config.Feed, error) {
	hub := fmt.Sprintf("%d:*", t.Hub.ID)
	if src, ok := strings.CutSuffix(name, ":*"); ok {
		if name != hub {
			return nil, fmt.Errorf("feed %q: only the hub's outbound feeds run together (--feed %s), as they share a slot with sink.sharedHubSlot; run other feeds one by one, e.g. --feed %s:%d", name, hub, src, t.Hub.ID)
		}
		if !t.Sink.SharedHubSlot {
			return nil, fmt.Errorf("feed %s: the hub's outbound feeds share a slot only with sink.sharedHubSlot: true in %s; without it run them one by one, e.g. --feed %s", hub, t.Path, t.Feeds()[1])
		}
		var out []config.Feed
		for _, f := range t.Feeds() {
			if f.Source.ID == t.Hub.ID {
				out = append(out, f)
			}
		}
		return out, nil
	}
	f, err := t.ParseFeed(name)
	if err != nil {
		return nil, err
	}
	if slot := plan.SharedSlotOf(t, f); slot != "" {
		return nil, fmt.Errorf("feed %s reads the slot %s with the hub's other outbound feeds (sink.sharedHubSlot: true in %s): run them together with --feed %s, or set sink.sharedHubSlot: false and run apply, which gives each a slot of its own",
			f, slot, t.Path, hub)
	}
	return []config.Feed{f}, nil
}
