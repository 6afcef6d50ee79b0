package main

import (
	"errors"
	"math"
	"slices"
	"testing"
)

// TestSearchPlan runs the search against a model system that sustains
// every rate up to capacity and whose workers reach at most workerMax,
// and checks the rates it tries, in order.
func TestSearchPlan(t *testing.T) {
	plan := searchPlan{start: 50, floor: 2.5, top: 6400, steps: 6, closeEnough: 1.25}
	tests := []struct {
		name                string
		plan                searchPlan
		capacity, workerMax float64
		want                []float64
	}{
		{"doubles, then bisects until the bracket is close", plan, 140, 1000,
			[]float64{50, 100, 200, 141, 119}},
		{"halves from a start above capacity, then bisects", plan, 30, 1000,
			[]float64{50, 25, 35, 30}},
		{"runs the workers uncapped once they cannot reach the cap, then stops", plan, 1000, 150,
			[]float64{50, 100, 200, math.Inf(1)}},
		{"no uncapped step beyond the step budget", searchPlan{start: 50, floor: 2.5, top: 6400, steps: 3, closeEnough: 1.25}, 1000, 150,
			[]float64{50, 100, 200}},
		{"gives up at the floor", searchPlan{start: 10, floor: 2.5, top: 6400, steps: 6, closeEnough: 1.25}, 1, 1000,
			[]float64{10, 5, 2.5}},
		{"stops at the top", searchPlan{start: 50, floor: 2.5, top: 200, steps: 6, closeEnough: 1.25}, 1000, 1000,
			[]float64{50, 100, 200}},
		{"a start above the top begins at the top", searchPlan{start: 500, floor: 2.5, top: 200, steps: 6, closeEnough: 1.25}, 150, 1000,
			[]float64{200, 100, 141, 168}},
		{"never more than the step budget", searchPlan{start: 50, floor: 2.5, top: 6400, steps: 3, closeEnough: 1.01}, 140, 1000,
			[]float64{50, 100, 200}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tried []float64
			trials, err := tc.plan.run(func(rate float64) (trial, error) {
				tried = append(tried, rate)
				return trial{achieved: min(rate, tc.workerMax), ok: rate <= tc.capacity}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(tried, tc.want) {
				t.Fatalf("tried %v, want %v", tried, tc.want)
			}
			if len(trials) != len(tried) {
				t.Fatalf("%d trials returned for %d tried", len(trials), len(tried))
			}
			for i, tr := range trials {
				if tr.rate != tried[i] {
					t.Errorf("trial %d has rate %v, want %v", i, tr.rate, tried[i])
				}
			}
		})
	}
}

// TestSearchPlanStops checks that a step asking to stop, or failing, ends
// the search at once.
func TestSearchPlanStops(t *testing.T) {
	plan := searchPlan{start: 50, floor: 2.5, top: 6400, steps: 6, closeEnough: 1.25}
	n := 0
	trials, err := plan.run(func(rate float64) (trial, error) {
		n++
		return trial{achieved: rate, ok: true, stop: n == 2}, nil
	})
	if err != nil || len(trials) != 2 {
		t.Fatalf("stop: %d trials, err %v; want 2 trials", len(trials), err)
	}
	boom := errors.New("boom")
	trials, err = plan.run(func(rate float64) (trial, error) { return trial{}, boom })
	if !errors.Is(err, boom) || len(trials) != 0 {
		t.Fatalf("error: %d trials, err %v; want 0 trials and boom", len(trials), err)
	}
}

func TestScalingStart(t *testing.T) {
	for _, tc := range []struct {
		name                                string
		searchStart, hintTxns, hintPerSpoke float64
		n                                   int
		want                                float64
	}{
		{"first count: the search's own start", 50, 0, 0, 1, 50},
		{"flat curve: the previous total shared", 50, 624, 0, 2, 312},
		{"workers' rate below the flat curve", 50, 400, 30, 4, 30},
		{"workers' rate above the flat curve", 50, 354, 88, 8, 44},
		{"never below the floor", 50, 10, 0, 8, searchFloor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := scalingStart(tc.searchStart, tc.hintTxns, tc.hintPerSpoke, tc.n); got != tc.want {
				t.Errorf("scalingStart = %v, want %v", got, tc.want)
			}
		})
	}
}
