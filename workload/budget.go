package workload

import (
	"sync"
	"sync/atomic"
)

// Budget is a number of ballots to cast in all, shared by workers.
type Budget struct {
	left  atomic.Int64
	spent chan struct{}
	once  sync.Once
}

// NewBudget is a budget of n ballots (n > 0).
func NewBudget(n int64) *Budget {
	b := &Budget{spent: make(chan struct{})}
	b.left.Store(n)
	return b
}

// take grants up to n ballots, fewer if the budget has fewer left, 0 when it
// is spent.
func (b *Budget) take(n int64) int64 {
	for {
		left := b.left.Load()
		got := min(n, left)
		if got <= 0 {
			b.once.Do(func() { close(b.spent) })
			return 0
		}
		if b.left.CompareAndSwap(left, left-got) {
			if got == left {
				b.once.Do(func() { close(b.spent) })
			}
			return got
		}
	}
}

// giveBack returns ballots a worker took but did not commit (it stopped).
func (b *Budget) giveBack(n int64) { b.left.Add(n) }

// Spent is closed once every ballot of the budget has been handed out; the
// workers then finish their last transactions and stop.
func (b *Budget) Spent() <-chan struct{} { return b.spent }

// Left is the ballots not yet handed out.
func (b *Budget) Left() int64 { return max(b.left.Load(), 0) }
