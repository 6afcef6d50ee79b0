package runner

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The console keeps its status block at the bottom: output written while
// it shows goes above it, and the block is redrawn in place.
func TestConsole(t *testing.T) {
	var b bytes.Buffer
	c := NewConsole(&b, func() int { return 12 })
	c.Write([]byte("plan\n"))
	c.Show([]string{"one", "a line longer than twelve"})
	c.Write([]byte("log line\n"))
	c.Show([]string{"two"})
	c.Keep()
	c.Write([]byte("report\n"))
	want := "plan\n" +
		"one\na line long\n" + // cut to the width, so lines never wrap
		"\x1b[2A\r\x1b[J" + "log line\n" + "one\na line long\n" +
		"\x1b[2A\r\x1b[J" + "two\n" +
		"report\n"
	if got := b.String(); got != want {
		t.Errorf("console wrote %q\nwant %q", got, want)
	}
}

func TestServeMetrics(t *testing.T) {
	r := New(Options{Out: io.Discard})
	reg := prometheus.NewRegistry()
	rr := &regionRun{}
	rr.reg.ID = 3
	rr.stats.Txns.Add(7)
	registerRegionMetrics(reg, rr)
	if _, _, err := r.serveMetrics("127.0.0.1:nope", reg); err == nil || !strings.Contains(err.Error(), "choose another --metrics-addr") {
		t.Errorf("bad address: %v", err)
	}
	url, stop, err := r.serveMetrics("127.0.0.1:0", reg)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `votr_worker_transactions_total{region="3"} 7`) {
		t.Errorf("metrics:\n%s", body)
	}
}
