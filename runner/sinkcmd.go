package runner

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
	"github.com/votr-dev/votr/sink"
)

// Sink runs the sink of one feed ("S:D") until ctx is done or the interrupt
// channel closes, showing its status like apply does.
func (r *Runner) Sink(ctx context.Context, t *config.Topology, feedName, metricsAddr string) error {
	f, err := t.ParseFeed(feedName)
	if err != nil {
		return err
	}
	dsns, err := r.regionDSNs(ctx, t, true)
	if err != nil {
		return err
	}
	if err := r.feedsFree(ctx, []*feedRun{{feed: f, srcDSN: dsns[f.Source.ID]}}); err != nil {
		return err
	}
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	_, stopMetrics, err := r.serveMetrics(metricsAddr, registry)
	if err != nil {
		return err
	}
	defer stopMetrics()
	s, err := sink.New(r.feedConfig(t, f, dsns[f.Source.ID], dsns[f.Target.ID], r.log, registry))
	if err != nil {
		return err
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
	fr := &feedRun{feed: f, sink: s, retained: -1}
	// One connection to the source for the status's slot readings.
	pcfg, err := pgxpool.ParseConfig(dsns[f.Source.ID])
	if err != nil {
		return fmt.Errorf("region %s: %w", f.Source.Label(), config.ScrubError(err, dsns[f.Source.ID]))
	}
	pcfg.MaxConns = 1
	srcPool, err := pgxpool.NewWithConfig(runCtx, pcfg)
	if err != nil {
		return fmt.Errorf("region %s: %w", f.Source.Label(), config.ScrubError(err, dsns[f.Source.ID]))
	}
	defer srcPool.Close()
	view := func() ([]*regionRun, []*feedRun, map[int]*pgxpool.Pool) {
		return nil, []*feedRun{fr}, map[int]*pgxpool.Pool{f.Source.ID: srcPool}
	}
	statusDone := make(chan struct{})
	go func() {
		defer close(statusDone)
		r.showStatus(runCtx, RunOptions{StatusEvery: 10 * time.Second}, view, t.Sink.SlotWarnBytes, func() string { return "sink " + plan.FeedLabel(f) })
	}()
	r.log.Info("sink running", "feed", plan.FeedLabel(f))
	err = s.Run(runCtx)
	stop()
	<-statusDone
	if r.opts.Console != nil {
		r.opts.Console.Keep()
	}
	return err
}
