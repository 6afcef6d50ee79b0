package main

import (
	"math"
)

// The search for the sustained pace, apart from what a step runs, so that
// its choice of rates can be tested without a server: double the rate
// while steps are sustained (halve it while they are not), then bisect
// between the best sustained rate and the lowest failed one until they are
// close enough or the steps run out. Every step costs a window of real
// time, so the plan bounds the number of steps, not the precision alone.

// searchPlan bounds one search. Rates are transactions per second per
// spoke (the workload's rate cap; +Inf: no cap, the workers' full speed).
type searchPlan struct {
	start       float64 // first rate tried
	floor, top  float64 // never below floor, never above top
	steps       int     // at most this many windows
	closeEnough float64 // stop bisecting once failed/sustained ≤ this ratio (> 1)
}

// trial is the outcome of one step of the search.
type trial struct {
	rate     float64 // the cap the step ran with
	achieved float64 // transactions per second per spoke the workers reached
	ok       bool    // sustained
	// stop ends the search after this step (the regions are out of step,
	// so later windows would not mean much).
	stop bool
}

// saturation: a sustained step whose workers reached less than this share
// of the cap was limited by the workers themselves, not the cap; raising
// the cap further cannot raise the throughput.
const saturation = 0.85

// run calls try with the rates of the search, in order, and returns the
// trials. It stops at the first error.
func (p searchPlan) run(try func(rate float64) (trial, error)) ([]trial, error) {
	var trials []trial
	lo, hi := 0.0, math.Inf(1) // best sustained rate, lowest failed rate
	rate := math.Max(p.floor, math.Min(p.start, p.top))
	for len(trials) < p.steps {
		tr, err := try(rate)
		if err != nil {
			return trials, err
		}
		tr.rate = rate
		trials = append(trials, tr)
		if tr.stop {
			break
		}
		if tr.ok {
			lo = math.Max(lo, rate)
			if tr.achieved < saturation*rate {
				// The workers' own speed is the limit, and a capped step
				// understates it (the cap spaces transactions evenly and
				// never makes up a slow one's slot): one last step runs
				// them uncapped.
				if !math.IsInf(rate, 1) && len(trials) < p.steps {
					rate = math.Inf(1)
					continue
				}
				break
			}
		} else {
			hi = math.Min(hi, rate)
		}
		next, more := p.next(rate, lo, hi)
		if !more {
			break
		}
		rate = next
	}
	return trials, nil
}

// next picks the rate after one at rate, given the bracket so far; false
// when the search is done.
func (p searchPlan) next(rate, lo, hi float64) (float64, bool) {
	switch {
	case math.IsInf(hi, 1): // nothing failed yet: double
		if rate >= p.top {
			return 0, false
		}
		return math.Min(2*rate, p.top), true
	case lo == 0: // nothing sustained yet: halve
		if rate/2 < p.floor {
			return 0, false
		}
		return rate / 2, true
	case hi/lo <= p.closeEnough:
		return 0, false
	}
	mid := math.Round(math.Sqrt(lo * hi))
	if mid <= lo || mid >= hi {
		return 0, false
	}
	return mid, true
}
