package workload

import (
	"strings"
	"testing"
)

func TestOptionsValidate(t *testing.T) {
	cases := []struct {
		name string
		set  func(*Options)
		want string // "" = valid
	}{
		{"defaults", func(*Options) {}, ""},
		{"no pause, no updates", func(o *Options) { o.Interval, o.CandidateUpdateEvery = 0, 0 }, ""},
		{"zero maxCandidates", func(o *Options) { o.MaxCandidates = 0 }, "maxCandidates = 0"},
		{"zero maxVotes", func(o *Options) { o.MaxVotes = 0 }, "maxVotes = 0"},
		{"negative interval", func(o *Options) { o.Interval = -1 }, "interval = -1ns"},
		{"negative candidateUpdateEvery", func(o *Options) { o.CandidateUpdateEvery = -1 }, "candidateUpdateEvery = -1"},
		{"zero validateEvery", func(o *Options) { o.ValidateEvery = 0 }, "validateEvery = 0s"},
		{"zero reportEvery", func(o *Options) { o.ReportEvery = 0 }, "reportEvery = 0s"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := DefaultOptions()
			c.set(&o)
			err := o.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("Validate = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// The original's ceiling: workers × ballotBatch × reportAfter / workerDelay
// (1 × 10 × 5 s / 100 ms = 500 with its defaults).
func TestMaxBallotsPer(t *testing.T) {
	o := DefaultOptions()
	cases := []struct {
		name    string
		set     func(*Options)
		workers int
		want    int64
		ok      bool
	}{
		{"original defaults", func(*Options) {}, 1, 500, true},
		{"four workers", func(*Options) {}, 4, 2000, true},
		{"maxVotes shape", func(o *Options) { o.BallotsPerTxn, o.MaxCandidates, o.MaxVotes = 0, 3, 4 }, 1, 600, true},
		{"no pause: no ceiling", func(o *Options) { o.Interval = 0 }, 1, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			oo := o
			c.set(&oo)
			n, ok := oo.MaxBallotsPer(c.workers, oo.ReportEvery)
			if n != c.want || ok != c.ok {
				t.Errorf("MaxBallotsPer = %d, %v; want %d, %v", n, ok, c.want, c.ok)
			}
		})
	}
}
