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
