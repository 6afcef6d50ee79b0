package ui

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

//go:embed static
var static embed.FS

// PushEvery is the least time between two pushed statuses: at most two
// updates a second, so a watching page costs the run little.
const PushEvery = 500 * time.Millisecond

// Options configure a Server.
type Options struct {
	Logger *slog.Logger
	// Secrets (passwords) are replaced by xxxxx in everything served, in
	// case an error message ever quotes one.
	Secrets []string
}

// Server serves the web view on one listener.
type Server struct {
	ln      net.Listener
	srv     *http.Server
	mux     *http.ServeMux
	url     string
	log     *slog.Logger
	secrets []string

	// compute serialises calls to the source.
	compute sync.Mutex

	mu       sync.Mutex
	source   Source
	latest   []byte // the last status served, as JSON
	latestAt time.Time
	subs     map[chan []byte]struct{}
	wake     chan struct{} // the push loop waits on it while nobody watches
	closing  chan struct{} // closed by Close: event streams end
	loopDone chan struct{}
}

// CheckAddr checks an address to serve the web view on. Loopback
// (127.0.0.1:PORT, [::1]:PORT, localhost:PORT) serves this machine only;
// naming another interface by its IP address serves that network too
// (exposed is then true, and the caller should say so). An empty host or
// an unspecified one (0.0.0.0, ::) is refused: serving every interface
// must not happen by accident. Port 0 picks a free port.
func CheckAddr(addr string) (exposed bool, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return false, fmt.Errorf("web view address %q: use HOST:PORT such as 127.0.0.1:8080", addr)
	}
	if host == "localhost" {
		return false, nil
	}
	ip := net.ParseIP(host)
	switch {
	case host == "" || (ip != nil && ip.IsUnspecified()):
		return false, fmt.Errorf("web view address %q would serve every network interface; use 127.0.0.1:%s for this machine only, or the IP address of the one interface to serve on", addr, port)
	case ip == nil:
		return false, fmt.Errorf("web view address %q: name an IP address (or localhost), not a host name, so it is clear which interface serves the page", addr)
	}
	return !ip.IsLoopback(), nil
}

// Listen checks addr (see CheckAddr), opens it and starts serving. The
// page shows "starting" until SetSource gives it something to show.
func Listen(addr string, o Options) (*Server, error) {
	exposed, err := CheckAddr(addr)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("web view address %s: %w (choose another --ui address)", addr, err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{
		ln: ln, mux: http.NewServeMux(), url: "http://" + ln.Addr().String() + "/", log: log,
		subs: map[chan []byte]struct{}{}, wake: make(chan struct{}, 1),
		closing: make(chan struct{}), loopDone: make(chan struct{}),
	}
	for _, sec := range o.Secrets {
		if sec != "" {
			s.secrets = append(s.secrets, sec)
		}
	}
	files, err := fs.Sub(static, "static")
	if err != nil {
		ln.Close()
		return nil, err
	}
	s.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(files)))
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		http.ServeFileFS(w, r, files, "index.html")
	})
	s.mux.HandleFunc("GET /api/status", s.serveStatus)
	s.mux.HandleFunc("GET /api/events", s.serveEvents)
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second}
	go s.srv.Serve(ln)
	go s.pushLoop()
	if exposed {
		log.Warn("the web view is served beyond this machine: anyone who reaches the address sees the topology's figures (no passwords)", "url", s.url)
	}
	return s, nil
}

// URL is the page's address.
func (s *Server) URL() string { return s.url }

// Handle serves h at pattern on the same listener (e.g. /metrics).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// SetSource makes src what the page shows from now on; watchers get it at
// once.
func (s *Server) SetSource(src Source) {
	s.mu.Lock()
	s.source = src
	s.latestAt = time.Time{}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Close pushes one last status to the open pages, ends their event
// streams (the page keeps what it shows) and stops serving.
func (s *Server) Close() {
	select {
	case <-s.closing:
		return
	default:
	}
	s.mu.Lock()
	watched := len(s.subs) > 0
	s.mu.Unlock()
	if watched {
		if b, err := s.refresh(context.Background()); err == nil {
			s.broadcast(b)
		}
	}
	close(s.closing)
	<-s.loopDone
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.srv.Shutdown(ctx)
}

// refresh asks the source for the status now and keeps it as JSON.
func (s *Server) refresh(ctx context.Context) ([]byte, error) {
	s.compute.Lock()
	defer s.compute.Unlock()
	s.mu.Lock()
	src := s.source
	s.mu.Unlock()
	st := &Status{Phase: PhaseStarting, Headline: "applying the topology; the run has not started yet", Problems: []string{}}
	if src != nil {
		if got := src(ctx); got != nil {
			st = got
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("web view status: %w", err)
	}
	b = s.scrub(b)
	s.mu.Lock()
	s.latest, s.latestAt = b, time.Now()
	s.mu.Unlock()
	return b, nil
}

// scrub replaces secrets, as written and as JSON escapes them.
func (s *Server) scrub(b []byte) []byte {
	for _, sec := range s.secrets {
		b = bytes.ReplaceAll(b, []byte(sec), []byte("xxxxx"))
		if esc, err := json.Marshal(sec); err == nil {
			b = bytes.ReplaceAll(b, bytes.Trim(esc, `"`), []byte("xxxxx"))
		}
	}
	return b
}

// pushLoop reads the status every PushEvery while a page listens and
// pushes it; while nobody listens it reads nothing.
func (s *Server) pushLoop() {
	defer close(s.loopDone)
	tick := time.NewTicker(PushEvery)
	defer tick.Stop()
	for {
		s.mu.Lock()
		watched := len(s.subs) > 0
		s.mu.Unlock()
		if watched {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			b, err := s.refresh(ctx)
			cancel()
			if err != nil {
				s.log.Warn("web view", "err", err)
			} else {
				s.broadcast(b)
			}
			select {
			case <-tick.C:
			case <-s.wake:
			case <-s.closing:
				return
			}
			continue
		}
		select {
		case <-s.wake:
		case <-s.closing:
			return
		}
	}
}

// broadcast hands b to every listening page; one that has not taken the
// previous status yet gets b instead (only the newest matters).
func (s *Server) broadcast(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case <-ch:
		default:
		}
		ch <- b
	}
}

func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	b, fresh := s.latest, time.Since(s.latestAt) < PushEvery
	s.mu.Unlock()
	if !fresh {
		var err error
		if b, err = s.refresh(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b)
}

// serveEvents streams the status as Server-Sent Events ("status" events
// whose data is the /api/status JSON), ending with an "end" event when
// the server closes.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	select {
	case <-s.closing:
		http.Error(w, "the run has ended", http.StatusServiceUnavailable)
		return
	default:
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	ch := make(chan []byte, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	if s.latest != nil {
		ch <- s.latest
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	send := func(event string, data []byte) bool {
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data); err != nil {
			return false
		}
		flusher.Flush()
		return true
	}
	for {
		select {
		case b := <-ch:
			if !send("status", b) {
				return
			}
		case <-r.Context().Done():
			return
		case <-s.closing:
			select {
			case b := <-ch:
				send("status", b)
			default:
			}
			send("end", []byte("{}"))
			return
		}
	}
}
