// Package faultproxy is a TCP proxy that tests put between votr and a
// PostgreSQL server to inject network faults: it forwards bytes both ways
// until told to cut the link (every connection is reset and new ones are
// refused), black-hole it (connections stay open but nothing gets through,
// like a silent partition), heal it again, or delay each direction.
//
// It is a test tool and is bounded on purpose: it listens on 127.0.0.1 only,
// forwards only to a loopback address, holds at most MaxConns connections
// and at most maxQueued bytes in flight per direction of a connection.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// MaxConns bounds the connections a proxy holds at once; more are refused.
const MaxConns = 256

// maxQueued bounds the bytes read but not yet written in one direction of
// one connection (latency buffers what is in flight); reading stops until
// the writer catches up.
const maxQueued = 4 << 20

// Direction is one way through the proxy.
type Direction int

const (
	// ToServer is client → server (queries, replication feedback).
	ToServer Direction = iota
	// ToClient is server → client (results, the replication stream).
	ToClient
)

func (d Direction) String() string {
	if d == ToServer {
		return "to-server"
	}
	return "to-client"
}

// Stats count what a proxy has seen.
type Stats struct {
	Accepted int64 // connections forwarded
	Refused  int64 // connections refused (too many, or dialing the target failed)
	Active   int   // connections open now
	Bytes    [2]int64
}

// Proxy forwards one loopback listen address to one loopback target.
type Proxy struct {
	target string

	mu      sync.Mutex
	ln      net.Listener
	port    int
	cut     bool
	hole    bool
	closed  bool
	conns   map[*link]struct{}
	latency [2]time.Duration
	wake    chan struct{} // closed and replaced when the link state changes
	acceptW sync.WaitGroup

	accepted, refused atomic.Int64
	bytes             [2]atomic.Int64
}

// link is one proxied connection: the client side and the server side.
type link struct {
	client, server net.Conn
	once           sync.Once
}

func (l *link) close() {
	l.once.Do(func() {
		for _, c := range []net.Conn{l.client, l.server} {
			if tc, ok := c.(*net.TCPConn); ok {
				// A reset, as a broken network shows it, rather than an
				// orderly end of stream.
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
		}
	})
}

// New starts a proxy on a free port of 127.0.0.1 that forwards to target
// ("127.0.0.1:5432"), which must be a loopback address.
func New(target string) (*Proxy, error) {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: target %q: want HOST:PORT: %w", target, err)
	}
	if _, err := strconv.Atoi(port); err != nil {
		return nil, fmt.Errorf("faultproxy: target %q: port is not a number", target)
	}
	ip := net.ParseIP(host)
	if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("faultproxy: target %q is not a loopback address; the proxy is a test tool and forwards only to 127.0.0.1", target)
	}
	p := &Proxy{target: target, conns: map[*link]struct{}{}, wake: make(chan struct{})}
	if err := p.listen(0); err != nil {
		return nil, err
	}
	return p, nil
}

// listen opens the listener on port (0: a free one) and starts accepting.
// Called with p.mu held or before p is shared.
func (p *Proxy) listen(port int) error {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("faultproxy: listen on 127.0.0.1:%d: %w", port, err)
	}
	p.ln = ln
	p.port = ln.Addr().(*net.TCPAddr).Port
	p.acceptW.Add(1)
	go p.accept(ln)
	return nil
}

// Addr is the proxy's listen address, "127.0.0.1:PORT"; it stays the same
// across Cut and Heal.
func (p *Proxy) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port()))
}

// Port is the proxy's listen port.
func (p *Proxy) Port() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.port
}

// Cut resets every connection and refuses new ones (the listen port is
// closed, so clients get "connection refused") until Heal.
func (p *Proxy) Cut() {
	p.dropAll(func() bool {
		if p.closed || p.cut {
			return false
		}
		p.cut = true
		return true
	})
}

// dropAll closes the listener and resets every connection, if mark (run
// under the lock) says the proxy's state changed.
func (p *Proxy) dropAll(mark func() bool) {
	p.mu.Lock()
	if !mark() {
		p.mu.Unlock()
		return
	}
	ln := p.ln
	p.ln = nil
	links := p.takeLinks()
	p.signal()
	p.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	p.acceptW.Wait()
	for _, l := range links {
		l.close()
	}
}

// Blackhole stops all traffic without closing anything: bytes in both
// directions are held back (up to the per-connection bound, then reading
// stops) and new connections are accepted but get no answer, like a
// network that silently drops packets. Heal lets the traffic through again.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hole = true
	p.signal()
}

// Heal ends a Cut or a Blackhole: the port accepts connections again and
// held-back traffic flows.
func (p *Proxy) Heal() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("faultproxy: closed")
	}
	p.hole = false
	if p.cut {
		if err := p.listen(p.port); err != nil {
			return err
		}
		p.cut = false
	}
	p.signal()
	return nil
}

// SetLatency delays every chunk of bytes going in direction d by delay
// (0: none). It applies to bytes read from now on.
func (p *Proxy) SetLatency(d Direction, delay time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency[d] = max(delay, 0)
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	active := len(p.conns)
	p.mu.Unlock()
	return Stats{
		Accepted: p.accepted.Load(), Refused: p.refused.Load(), Active: active,
		Bytes: [2]int64{p.bytes[0].Load(), p.bytes[1].Load()},
	}
}

// Close stops the proxy and resets every connection.
func (p *Proxy) Close() error {
	p.dropAll(func() bool {
		if p.closed {
			return false
		}
		p.closed = true
		return true
	})
	return nil
}

// takeLinks empties the connection set; p.mu is held.
func (p *Proxy) takeLinks() []*link {
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	clear(p.conns)
	return links
}

// signal wakes every pump waiting on a state change; p.mu is held.
func (p *Proxy) signal() {
	close(p.wake)
	p.wake = make(chan struct{})
}

func (p *Proxy) accept(ln net.Listener) {
	defer p.acceptW.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed by Cut or Close
		}
		go p.serve(c)
	}
}

// serve dials the target for one client connection and pumps both ways.
func (p *Proxy) serve(client net.Conn) {
	p.mu.Lock()
	full := len(p.conns) >= MaxConns
	gone := p.closed || p.cut
	p.mu.Unlock()
	if full || gone {
		p.refused.Add(1)
		_ = client.Close()
		return
	}
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		p.refused.Add(1)
		_ = client.Close()
		return
	}
	l := &link{client: client, server: server}
	p.mu.Lock()
	if p.closed || p.cut {
		p.mu.Unlock()
		l.close()
		return
	}
	p.conns[l] = struct{}{}
	p.mu.Unlock()
	p.accepted.Add(1)

	var wg sync.WaitGroup
	wg.Go(func() { p.pump(l, client, server, ToServer) })
	wg.Go(func() { p.pump(l, server, client, ToClient) })
	wg.Wait()
	l.close()
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
}

// chunk is bytes read at a moment, to be written once their delay passed.
type chunk struct {
	b   []byte
	due time.Time
}

// pump copies src to dst in direction d, honouring latency and the
// black hole. Either side failing closes the whole link; an orderly end of
// stream is passed on once the bytes before it are out.
func (p *Proxy) pump(l *link, src, dst net.Conn, d Direction) {
	q := make(chan chunk, 1024)
	var queued atomic.Int64
	room := make(chan struct{}, 1)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for c := range q {
			if wait := time.Until(c.due); wait > 0 {
				time.Sleep(wait)
			}
			if !p.waitOpen(l) {
				l.close()
				return
			}
			if _, err := dst.Write(c.b); err != nil {
				l.close()
				return
			}
			p.bytes[d].Add(int64(len(c.b)))
			queued.Add(-int64(len(c.b)))
			select {
			case room <- struct{}{}:
			default:
			}
		}
	}()
	orderly := false
read:
	for {
		for queued.Load() >= maxQueued {
			select {
			case <-room:
			case <-writerDone:
				break read
			}
		}
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			delay := p.latency[d]
			p.mu.Unlock()
			queued.Add(int64(n))
			select {
			case q <- chunk{b: buf[:n], due: time.Now().Add(delay)}:
			case <-writerDone:
				break read
			}
		}
		if err != nil {
			orderly = errors.Is(err, io.EOF)
			break
		}
	}
	close(q)
	if !orderly {
		l.close()
	}
	<-writerDone
	if orderly {
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}
}

// waitOpen blocks while the proxy is a black hole; it reports false when
// the link was dropped meanwhile.
func (p *Proxy) waitOpen(l *link) bool {
	for {
		p.mu.Lock()
		_, alive := p.conns[l]
		hole, wake := p.hole, p.wake
		p.mu.Unlock()
		if !alive {
			return false
		}
		if !hole {
			return true
		}
		<-wake
	}
}
