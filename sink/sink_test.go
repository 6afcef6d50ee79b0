package sink

import (
	"context"
	"testing"
	"time"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/internal/pgtest"
)

// A stream of VOTR transactions replicates from a spoke to the hub and
// the two converge, row for row.
func TestReplicateConverges(t *testing.T) {
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 1)
	dst := newRegion(t, srv, 0)
	createSlot(t, src, dst.id)

	for _, batch := range []int{200, 1} {
		stop := make(chan struct{})
		done := writers(t, src.dsn, 3, uint64(batch), stop, 0)
		r := start(t, feedConfig(t, src, dst, votrScript(t), config.SinkOptions{BatchTxns: batch, BatchRows: 10000, Retries: 3}))
		time.Sleep(1500 * time.Millisecond)
		close(stop)
		n := done()
		waitCaughtUp(t, r, src.dsn, 30*time.Second)
		if err := r.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		st := r.s.Status()
		t.Logf("batch %d: %d source txns; status %+v", batch, n, st)
		if got, want := digest(t, dst.dsn), digest(t, src.dsn); got != want {
			t.Fatalf("target differs from source:\n got %s\nwant %s", got, want)
		}
		checkInvariant(t, dst.dsn)
		if st.Txns == 0 || st.Rows == 0 {
			t.Errorf("status counts nothing: %+v", st)
		}
		if st.Conflicts != 0 {
			t.Errorf("one-way feed had %d conflicts", st.Conflicts)
		}
		// The checkpoint holds the last applied commit.
		ck := queryInt(t, dst.dsn, `SELECT source_lsn - '0/0' FROM votr.checkpoints WHERE feed = '1:0'`)
		if ck != int64(st.AppliedLSN) {
			t.Errorf("checkpoint %d, status AppliedLSN %d", ck, st.AppliedLSN)
		}
	}
	_ = context.Background
}
