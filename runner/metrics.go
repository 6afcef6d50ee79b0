package runner

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveMetrics serves registry on addr ("" serves nothing) and returns
// the URL it serves. The listener opens before it returns, so a taken port
// is an error now.
func (r *Runner) serveMetrics(addr string, registry *prometheus.Registry) (url string, stop func(), err error) {
	if addr == "" {
		return "", func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("metrics address %s: %w (choose another --metrics-addr)", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	url = "http://" + ln.Addr().String() + "/metrics"
	r.log.Info("serving metrics", "url", url)
	return url, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// registerRegionMetrics registers the region's series and returns them, to
// be unregistered when the region leaves the run.
func registerRegionMetrics(reg *prometheus.Registry, rr *regionRun) []prometheus.Collector {
	labels := prometheus.Labels{"region": fmt.Sprint(rr.reg.ID)}
	var out []prometheus.Collector
	counter := func(name, help string, f func() float64) {
		c := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f)
		reg.MustRegister(c)
		out = append(out, c)
	}
	counter("votr_worker_transactions_total", "Transactions committed by the region's workers.", func() float64 { return float64(rr.stats.Txns.Load()) })
	counter("votr_worker_ballots_total", "Ballots committed by the region's workers.", func() float64 { return float64(rr.stats.Ballots.Load()) })
	counter("votr_worker_retries_total", "Worker transaction attempts run again.", func() float64 { return float64(rr.stats.Retries.Load()) })
	counter("votr_validator_checks_total", "Invariant checks completed in the region.", func() float64 { return float64(rr.vstat.Checks.Load()) })
	counter("votr_validator_violations_total", "Invariant violations found in the region.", func() float64 { return float64(rr.vstat.Violations.Load()) })
	return out
}
