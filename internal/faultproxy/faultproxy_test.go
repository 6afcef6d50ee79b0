package faultproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/pgtest"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// roundTrip sends one line and waits up to wait for it to come back.
func roundTrip(c net.Conn, r *bufio.Reader, msg string, wait time.Duration) (time.Duration, error) {
	start := time.Now()
	c.SetDeadline(start.Add(wait))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if strings.TrimSpace(line) != msg {
		return 0, fmt.Errorf("got %q back, sent %q", line, msg)
	}
	return time.Since(start), nil
}

func TestForwardCutHeal(t *testing.T) {
	p := newProxy(t, echoServer(t))
	c, r := dial(t, p.Addr())
	if _, err := roundTrip(c, r, "hello", time.Second); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}

	p.Cut()
	if _, err := roundTrip(c, r, "after cut", time.Second); err == nil {
		t.Fatal("a connection survived the cut")
	}
	_, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial during the cut: %v, want connection refused", err)
	}
	if st := p.Stats(); st.Active != 0 {
		t.Errorf("%d connections active during the cut", st.Active)
	}

	if err := p.Heal(); err != nil {
		t.Fatal(err)
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatalf("dial after heal: %v", err)
	}
	defer c2.Close()
	if _, err := roundTrip(c2, bufio.NewReader(c2), "healed", time.Second); err != nil {
		t.Fatalf("after heal: %v", err)
	}
	if st := p.Stats(); st.Accepted != 2 || st.Bytes[ToServer] == 0 || st.Bytes[ToClient] == 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestLatencyPerDirection(t *testing.T) {
	p := newProxy(t, echoServer(t))
	c, r := dial(t, p.Addr())
	for _, tc := range []struct {
		up, down time.Duration
	}{{50 * time.Millisecond, 0}, {0, 50 * time.Millisecond}, {40 * time.Millisecond, 40 * time.Millisecond}, {0, 0}} {
		p.SetLatency(ToServer, tc.up)
		p.SetLatency(ToClient, tc.down)
		rtt, err := roundTrip(c, r, "ping", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		want := tc.up + tc.down
		if rtt < want || rtt > want+500*time.Millisecond {
			t.Errorf("latency up %s down %s: round trip %s", tc.up, tc.down, rtt)
		}
	}
}

func TestBlackhole(t *testing.T) {
	p := newProxy(t, echoServer(t))
	c, r := dial(t, p.Addr())
	p.Blackhole()
	if _, err := roundTrip(c, r, "lost", 300*time.Millisecond); !errors.Is(err, syscall.ETIMEDOUT) && !isTimeout(err) {
		t.Fatalf("through the black hole: %v, want a timeout", err)
	}
	if err := p.Heal(); err != nil {
		t.Fatal(err)
	}
	// What was held back arrives once the link heals, in order.
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := r.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "lost" {
		t.Fatalf("after heal: %q %v", line, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestOnlyLoopback(t *testing.T) {
	for _, target := range []string{"10.0.0.1:5432", "example.com:5432", "5432", "127.0.0.1:pg"} {
		if _, err := New(target); err == nil {
			t.Errorf("New(%q) accepted a target that is not a loopback HOST:PORT", target)
		}
	}
}

// A PostgreSQL session through the proxy fails on a cut and a new one
// works after heal.
func TestPostgresThroughProxy(t *testing.T) {
	pg := pgtest.Start(t)
	p := newProxy(t, fmt.Sprintf("127.0.0.1:%d", pg.Port()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := strings.Replace(pg.DSN("postgres"), fmt.Sprintf("127.0.0.1:%d", pg.Port()), p.Addr(), 1) + "&connect_timeout=2"
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err == nil {
		t.Fatal("a query went through a cut link")
	}
	if _, err := pgx.Connect(ctx, dsn); err == nil {
		t.Fatal("connected through a cut link")
	}
	if err := p.Heal(); err != nil {
		t.Fatal(err)
	}
	conn2, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("after heal: %v", err)
	}
	defer conn2.Close(ctx)
	if err := conn2.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// dial connects to addr for the rest of the test.
func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}
