package workload

import (
	"context"
	"testing"
	"time"
)

// Every stops when read says so, and when its context ends (even while
// read would go on); it never calls read after either.
func TestEvery(t *testing.T) {
	tests := []struct {
		name      string
		stopAfter int // read returns false on this call; 0: never
		cancelAt  int // the context is cancelled during this call; 0: never
		want      int // calls of read
	}{
		{"read stops it", 3, 0, 3},
		{"context ends it", 0, 2, 2},
		{"first call stops it", 1, 0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			calls := 0
			done := make(chan struct{})
			go func() {
				defer close(done)
				Every(ctx, time.Millisecond, func() bool {
					calls++
					if calls == tc.cancelAt {
						cancel()
					}
					return calls != tc.stopAfter
				})
			}()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatal("Every did not return")
			}
			if calls != tc.want {
				t.Errorf("read called %d times, want %d", calls, tc.want)
			}
		})
	}
}
