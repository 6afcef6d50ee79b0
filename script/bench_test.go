package script

import (
	"testing"
	"time"
)

// BenchmarkMergeTotals measures one conflicting totals change through
// votr.ts: Go rows → JS, the merge, the result checked and back to Go.
func BenchmarkMergeTotals(b *testing.B) {
	p, err := Compile(votrScript)
	if err != nil {
		b.Fatal(err)
	}
	h, err := NewHost(p, time.Second)
	if err != nil {
		b.Fatal(err)
	}
	op := Op{
		Before:   totalRow("3f0c2a4e-8b1d-4c6e-9a7f-0d2b5e8c1a93", 1, e3{1, 41, 90}, e3{2, 30, 70}, e3{3, 12, 20}),
		Proposed: totalRow("3f0c2a4e-8b1d-4c6e-9a7f-0d2b5e8c1a93", 1, e3{1, 42, 93}, e3{2, 30, 70}, e3{3, 12, 20}),
		Target:   totalRow("3f0c2a4e-8b1d-4c6e-9a7f-0d2b5e8c1a93", 2, e3{1, 41, 90}, e3{2, 31, 72}, e3{3, 12, 20}),
		Meta:     Meta{Source: 1, Target: 0, Table: "totals", LSN: "0/16B3748", CommitTime: time.Now()},
	}
	res, err := h.Merge("totals", op)
	if err != nil || res.Action != Apply || res.Row["total"] != int64(185) {
		b.Fatalf("unexpected merge result %+v, %v", res, err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.Merge("totals", op); err != nil {
			b.Fatal(err)
		}
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
