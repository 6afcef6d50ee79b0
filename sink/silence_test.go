package sink

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/faultproxy"
	"github.com/votr-dev/votr/internal/pgtest"
)

// A shared slot's control questions, asked on a connection whose link
// then goes silent (packets dropped, nothing closed), end with the
// silence error after answerTimeout: the Fanout's loop, which runs every
// feed of the slot, does not wait for TCP to give up (minutes).
func TestFanoutQuestionsEndInSilence(t *testing.T) {
	srv := pgtest.Start(t)
	cases := []struct {
		name string
		ask  func(ctx context.Context, conn *pgx.Conn) error
	}{
		{"slot positions", func(ctx context.Context, conn *pgx.Conn) error {
			_, _, err := slotPositions(ctx, conn, "votr_0_to_1", "votr_0_to_2")
			return err
		}},
		{"slot idle", func(ctx context.Context, conn *pgx.Conn) error {
			_, err := slotIdle(ctx, conn, "votr_0_to_1")
			return err
		}},
		{"lock holder", func(ctx context.Context, conn *pgx.Conn) error {
			if h := lockHolder(ctx, conn, "votr_0_to_1"); h != "" {
				return errors.New("a holder named through a silent link: " + h)
			}
			// Its error is not returned (it only names the holder in a
			// warning); the time it took is what counts.
			return &silenceError{}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			proxy, err := faultproxy.New("127.0.0.1:" + strconv.Itoa(srv.Port()))
			if err != nil {
				t.Fatal(err)
			}
			defer proxy.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*answerTimeout)
			defer cancel()
			dsn := strings.Replace(srv.DSN("postgres"), "127.0.0.1:"+strconv.Itoa(srv.Port()), proxy.Addr(), 1)
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			proxy.Blackhole()
			began := time.Now()
			err = c.ask(ctx, conn)
			took := time.Since(began)
			if se := (*silenceError)(nil); !errors.As(err, &se) {
				t.Fatalf("after %s: %v; want the source's silence noticed", took.Round(time.Millisecond), err)
			}
			if ctx.Err() != nil {
				t.Fatalf("the question ended only with the test's own deadline, after %s", took.Round(time.Millisecond))
			}
			if took < answerTimeout {
				t.Errorf("ended after %s, before answerTimeout (%s): not by the silence", took.Round(time.Millisecond), answerTimeout)
			}
		})
	}
}

// A drop of a slot cut off by its deadline may still run on the server:
// its backend slow, and the cancel request pgx sends lost in the same
// silence as the answer. slotGone ends that backend before it answers, so
// that a slot it calls still there stays there. Here the backend is still
// running the drop, 10 s of sleep before it.
func TestSlotGoneEndsTheCutDrop(t *testing.T) {
	src, dst := feedOnOneServer(t)
	s, err := New(feedConfig(t, src, dst, votrScript(t), options(200, 10000, 1)))
	if err != nil {
		t.Fatal(err)
	}
	const slot = "votr_cut_drop"
	pgtest.Exec(t, src.dsn, `SELECT pg_create_logical_replication_slot('`+slot+`', 'pgoutput')`)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, src.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	pid := int32(conn.PgConn().PID())
	dropped := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, `SELECT pg_sleep(10), pg_catalog.pg_drop_replication_slot('`+slot+`')`)
		dropped <- err
	}()
	waitFor(t, "the drop's backend to run it", func() bool {
		return queryInt(t, src.dsn, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_drop_replication_slot%'`, pid) == 1
	})
	gone, err := slotGone(ctx, s, slot, uint32(pid))
	if err != nil || gone {
		t.Fatalf("slotGone: %v, %v; want the slot still there", gone, err)
	}
	if err := <-dropped; err == nil {
		t.Fatalf("the drop ran to its end")
	}
	if n := queryInt(t, src.dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = '`+slot+`'`); n != 1 {
		t.Fatalf("the slot slotGone saw is gone now: the drop ran after the answer")
	}
}
