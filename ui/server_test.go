package ui

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/votr-dev/votr/report"
)

func TestCheckAddr(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		exposed bool
		err     string
	}{
		{addr: "127.0.0.1:8080"},
		{addr: "127.0.0.1:0"},
		{addr: "[::1]:8080"},
		{addr: "localhost:8080"},
		{addr: "10.1.2.3:8080", exposed: true},
		{addr: ":8080", err: "every network interface"},
		{addr: "0.0.0.0:8080", err: "every network interface"},
		{addr: "[::]:8080", err: "every network interface"},
		{addr: "example.com:8080", err: "name an IP address"},
		{addr: "127.0.0.1", err: "use HOST:PORT"},
		{addr: "127.0.0.1:", err: "use HOST:PORT"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			exposed, err := CheckAddr(tc.addr)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want one saying %q", err, tc.err)
			case exposed != tc.exposed:
				t.Fatalf("exposed %v, want %v", exposed, tc.exposed)
			}
		})
	}
}

// The server reads its source only while someone watches; serves the
// page, its scripts and the JSON; pushes statuses as events, at most one
// per PushEvery; ends the stream with "end" on Close; and never serves a
// secret.
func TestServer(t *testing.T) {
	const secret = `pa"ss` // JSON escapes the quote
	s, err := Listen("127.0.0.1:0", Options{Secrets: []string{secret}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var calls atomic.Int64
	s.SetSource(func(context.Context) *Status {
		n := calls.Add(1)
		st := (&Status{Phase: PhaseRunning, Headline: "error: password " + secret}).WithReport(&report.Report{HubID: 0,
			Regions: []report.RegionReport{{ID: 0, Label: "0 (hub)", Ballots: n}}})
		st.Live.Regions = []LiveRegion{{ID: 0, Label: "0 (hub)", Hub: true, Ballots: n}}
		return st
	})
	// Nobody watches: the source is not read.
	time.Sleep(3 * PushEvery)
	if n := calls.Load(); n != 0 {
		t.Errorf("the source was read %d times with nobody watching", n)
	}

	get := func(path string) (string, string) {
		t.Helper()
		resp, err := http.Get(s.URL() + strings.TrimPrefix(path, "/"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		return string(b), resp.Header.Get("Content-Type")
	}
	for path, want := range map[string]string{
		"/":                         `<svg id="topology"`,
		"/static/app.js":            "new EventSource(\"/api/events\")",
		"/static/uPlot.iife.min.js": "uPlot",
		"/static/uPlot.min.css":     ".uplot",
		"/static/app.css":           ".feed.connected",
		"/static/uPlot.LICENSE":     "MIT",
		"/static/index.html":        "<title>votr",
	} {
		if body, _ := get(path); !strings.Contains(body, want) {
			t.Errorf("GET %s lacks %q", path, want)
		}
	}

	body, ctype := get("/api/status")
	if ctype != "application/json" {
		t.Errorf("/api/status Content-Type %q", ctype)
	}
	if strings.Contains(body, `pa\"ss`) || strings.Contains(body, secret) || !strings.Contains(body, "password xxxxx") {
		t.Errorf("/api/status serves the secret: %s", body)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	// The check --json keys at the top level, plus the live ones.
	for _, k := range []string{"at", "hub", "regions", "feeds", "ok", "problems", "phase", "final", "live"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("/api/status lacks %q: %s", k, body)
		}
	}

	resp, err := http.Get(s.URL() + "api/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("/api/events Content-Type %q", ct)
	}
	events := make(chan [2]string, 100)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var name string
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "event: "); ok {
				name = v
			} else if v, ok := strings.CutPrefix(line, "data: "); ok {
				events <- [2]string{name, v}
			}
		}
	}()
	var ballots []float64
	var times []time.Time
	deadline := time.After(30 * time.Second)
	for len(ballots) < 5 {
		select {
		case ev := <-events:
			if ev[0] != "status" {
				t.Fatalf("event %q before the end", ev[0])
			}
			var st struct {
				Live struct{ Regions []struct{ Ballots float64 } }
			}
			if err := json.Unmarshal([]byte(ev[1]), &st); err != nil || len(st.Live.Regions) != 1 {
				t.Fatalf("event data %v: %s", err, ev[1])
			}
			ballots = append(ballots, st.Live.Regions[0].Ballots)
			times = append(times, time.Now())
		case <-deadline:
			t.Fatalf("only %d events in 30s", len(ballots))
		}
	}
	for i := 1; i < len(ballots); i++ {
		if ballots[i] <= ballots[i-1] {
			t.Errorf("pushed statuses do not move on: %v", ballots)
		}
	}
	// At most one push per PushEvery once streaming (the first two may
	// come together: the last status, then a fresh one); a slow machine
	// only spaces them more.
	if span := times[4].Sub(times[2]); span < 2*PushEvery*8/10 {
		t.Errorf("3 events in %s: more than one per %s", span, PushEvery)
	}

	s.Close()
	var last string
	for ev := range events {
		last = ev[0]
	}
	if last != "end" {
		t.Errorf("the stream ended with %q, want an end event", last)
	}
}
