package script

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkMergeTotals measures one conflicting totals change through
// votr.ts: Go rows → JS, the merge, the result checked and back to Go; with
// the clock of the stock demo (3 regions) and of a hub with 8 spokes.
func BenchmarkMergeTotals(b *testing.B) {
	p, err := Compile(votrScript)
	if err != nil {
		b.Fatal(err)
	}
	h, err := NewHost(p, time.Second)
	if err != nil {
		b.Fatal(err)
	}
	// clock: regions 0..n-1, region bump one update ahead.
	clock := func(n, bump int) []e3 {
		var es []e3
		for r := range n {
			c := 40 + r
			if r == bump {
				c++
			}
			es = append(es, e3{r, c, 3 * c})
		}
		return es
	}
	const cand = "3f0c2a4e-8b1d-4c6e-9a7f-0d2b5e8c1a93"
	for _, regions := range []int{3, 9} {
		b.Run(fmt.Sprintf("%d regions", regions), func(b *testing.B) {
			op := Op{
				Before:   totalRow(cand, 1, clock(regions, -1)...),
				Proposed: totalRow(cand, 1, clock(regions, 1)...),
				Target:   totalRow(cand, 2, clock(regions, 2)...),
				Meta:     Meta{Source: 1, Target: 0, Table: "totals", LSN: "0/16B3748", CommitTime: time.Now()},
			}
			want := int64(0)
			for _, e := range clock(regions, -1) {
				want += int64(e[2])
			}
			want += 2 * 3 // regions 1 and 2 are each one update ahead
			res, err := h.Merge("totals", op)
			if err != nil || res.Action != Apply || res.Row["total"] != want {
				b.Fatalf("unexpected merge result %+v, %v (want total %d)", res, err, want)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := h.Merge("totals", op); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMergeBallotEcho is the cheapest conflict: an identical ballot.
func BenchmarkMergeBallotEcho(b *testing.B) {
	p, err := Compile(votrScript)
	if err != nil {
		b.Fatal(err)
	}
	h, err := NewHost(p, time.Second)
	if err != nil {
		b.Fatal(err)
	}
	row := ballotRow("3f0c2a4e-8b1d-4c6e-9a7f-0d2b5e8c1a93", "9a7f0d2b-5e8c-41a9-93f0-c2a4e8b1d4c6", 1)
	op := Op{Proposed: row, Target: row, Meta: Meta{Source: 1, Table: "ballots"}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.Merge("ballots", op); err != nil {
			b.Fatal(err)
		}
	}
}
