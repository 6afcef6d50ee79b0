package testlog

import (
	"fmt"
	"sync"
	"testing"
)

// Writers on several goroutines lose nothing, and a reader sees whole writes.
func TestBufferSharedByWriters(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				fmt.Fprintf(&b, "line %d.%d\n", w, i)
				_ = b.String()
			}
		}()
	}
	wg.Wait()
	if got := b.Count("line "); got != 800 {
		t.Fatalf("Count(line) = %d, want 800", got)
	}
	if got := b.Count("line 3.99\n"); got != 1 {
		t.Fatalf("Count(line 3.99) = %d, want 1", got)
	}
}
