package runner

import (
	"context"
	"sync/atomic"
	"time"
)

// progress is one working region's ballots per reporting period, as the
// original's "inserted N ballots" lines: the workers' cumulative count is
// read every period and the difference reported.
type progress struct {
	reported atomic.Int64 // cumulative ballots at the latest line
	last     atomic.Int64 // ballots in the latest complete period
	periods  atomic.Int64 // complete periods reported
}

// tick reports the ballots committed since the previous tick, given the
// workers' cumulative count now.
func (p *progress) tick(now int64) int64 {
	n := now - p.reported.Swap(now)
	return n
}

// reportEvery is the run's progress period: the flag, else the topology's.
func (lr *liveRun) reportEvery() time.Duration {
	if lr.o.ReportEvery > 0 {
		return lr.o.ReportEvery
	}
	return lr.t.Workload.ReportEvery
}

// startProgress logs the theoretical maximum per period, then, every
// period, one line per working region with the ballots its workers
// inserted in that period.
func (lr *liveRun) startProgress() {
	every, t, log := lr.reportEvery(), lr.t, lr.r.log
	if every <= 0 {
		return
	}
	if n, ok := t.Workload.MaxBallotsPer(t.Workers, every); ok {
		log.Info("inserting ballots; theoretical max per working region and reporting interval", "workers", t.Workers,
			"candidates", t.Candidates, "interval", every, "max_ballots_per_interval", n,
			"hint", "far fewer may mean contention: too few candidates for the workers, or a slow server")
	} else {
		log.Info("inserting ballots as fast as the servers allow (workload.interval is 0: no theoretical max)",
			"workers", t.Workers, "candidates", t.Candidates, "interval", every)
	}
	ctx, cancel := context.WithCancel(lr.rs.ctx)
	lr.progressCancel, lr.progressDone = cancel, make(chan struct{})
	go func() {
		defer close(lr.progressDone)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				lr.reportProgress(every, false)
			}
		}
	}()
}

// reportProgress logs, per working region, the ballots inserted since the
// previous line; final marks the part period before the workers stopped,
// so that the lines of a run add up to what its workers inserted.
func (lr *liveRun) reportProgress(every time.Duration, final bool) {
	_, regions, _ := lr.rs.snapshot()
	for _, rr := range regions {
		if rr.workDone == nil {
			continue
		}
		n := rr.progress.tick(rr.stats.Ballots.Load())
		if !final {
			rr.progress.last.Store(n)
			rr.progress.periods.Add(1)
		}
		lr.r.log.Info("inserted ballots", "region", rr.reg.Label(), "ballots", n, "interval", every, "final", final)
	}
}

// stopProgress stops the periodic lines and logs the last, part period;
// again is harmless.
func (lr *liveRun) stopProgress() {
	if lr.progressCancel == nil {
		return
	}
	lr.progressCancel()
	<-lr.progressDone
	lr.progressCancel = nil
	lr.reportProgress(lr.reportEvery(), true)
}
