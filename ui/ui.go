// Package ui serves the live web view of a votr run: one page (embedded,
// with a vendored uPlot, so it works offline) that draws the topology and
// its feeds, the per-region table, time series and the convergence report;
// /api/status, the JSON behind it; /api/events, the same JSON pushed as
// Server-Sent Events at most twice a second; and, when the caller adds it,
// /metrics on the same listener. It knows nothing of how a run works: the
// caller hands it a Source that returns the status of the moment.
package ui

import (
	"context"
	"time"

	"github.com/votr-dev/votr/report"
)

// Source returns the status to show now. It is called only while someone
// is watching (an open page or an /api/status request), at most a few times
// a second, from one goroutine at a time.
type Source func(ctx context.Context) *Status

// Phases of a Status.
const (
	PhaseStarting = "starting" // apply is converging; nothing runs yet
	PhaseRunning  = "running"  // workers and sinks run
	PhaseDraining = "draining" // workers stopped; feeds catching up
	PhaseDone     = "done"     // the run ended; Report is the final report
	PhaseCheck    = "check"    // votr check: read-only, re-read periodically
)

// Status is the JSON of /api/status and of each event: the convergence
// report exactly as `votr check --json` prints it (its keys at the top
// level; absent until a report has been read) plus what is live.
type Status struct {
	*report.Report
	OK       bool     `json:"ok"`
	Problems []string `json:"problems"`

	// Phase is one of the Phase constants; Final is set on the last status
	// of a run (Phase done): the page stops listening after it.
	Phase string `json:"phase"`
	Final bool   `json:"final"`
	// Headline is one sentence on what happens now.
	Headline string `json:"headline"`
	// Elapsed is seconds since the workers started (0 before).
	Elapsed float64 `json:"elapsed_s"`
	// Live is read every second or so; during a run the report (read every
	// few seconds) lags it.
	Live Live `json:"live"`
}

// Live are the figures read every second or so, cheaply.
type Live struct {
	At      time.Time    `json:"at"`
	Regions []LiveRegion `json:"regions"`
	Feeds   []LiveFeed   `json:"feeds"`
}

// LiveRegion is one region now.
type LiveRegion struct {
	ID    int    `json:"id"`
	Label string `json:"label"`
	Hub   bool   `json:"hub"`
	// Ballots is sum(totals): the ballots the region holds while the
	// invariant holds (one row per candidate to read, not one per ballot).
	Ballots int64 `json:"ballots"`
	// BallotsPerSec is how fast Ballots grew since the previous reading:
	// the region's own workers plus what its feeds bring.
	BallotsPerSec float64 `json:"ballots_per_s"`
	// Committed is what this run's workers committed in the region (spokes).
	Committed int64 `json:"committed"`
	// Violations is what the validation loop found during the run.
	Violations int64 `json:"violations"`
}

// Feed health, as the page colours it.
const (
	HealthConnected = "connected" // applying, and keeping up
	HealthBehind    = "behind"    // applying, but lag past BehindLag or BehindBytes
	HealthStopped   = "stopped"   // not connected (starting, failed, stopped)
)

// LiveFeed is one feed (source → target) now.
type LiveFeed struct {
	Name   string `json:"name"` // "S:D"
	Source int    `json:"source"`
	Target int    `json:"target"`
	Health string `json:"health"`
	// LagMS is from the source commit to the target commit of the last
	// applied transaction; LagBytes is the WAL the source's server wrote
	// past the feed's position, of every database on it (so not 0 after
	// convergence on a shared server; not the WAL still to apply, which
	// `votr check`'s LAG counts in transactions; -1: unknown).
	LagMS        int64   `json:"lag_ms"`
	LagBytes     int64   `json:"lag_bytes"`
	RowsPerSec   float64 `json:"rows_per_s"`
	Rows         int64   `json:"rows"`
	Conflicts    int64   `json:"conflicts"`
	DeadLettered int64   `json:"dead_lettered"`
	LastError    string  `json:"last_error,omitempty"`
}

// A connected feed is behind past either of these: seconds between a
// commit at the source and at the target, or source WAL behind.
const (
	BehindLag   = 5 * time.Second
	BehindBytes = 8 << 20
)

// HealthOf classifies a feed from what its sink says.
func HealthOf(connected bool, lag time.Duration, lagBytes int64) string {
	switch {
	case !connected:
		return HealthStopped
	case lag > BehindLag || lagBytes > BehindBytes:
		return HealthBehind
	}
	return HealthConnected
}

// WithReport sets the report and its verdict.
func (s *Status) WithReport(rep *report.Report) *Status {
	s.Report = rep
	s.Problems = []string{}
	s.OK = false
	if rep != nil {
		if ps := rep.Problems(); len(ps) > 0 {
			s.Problems = ps
		}
		s.OK = len(s.Problems) == 0
	}
	return s
}
