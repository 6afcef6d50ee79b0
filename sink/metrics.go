package sink

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one feed's Prometheus series. Sinks of several feeds share
// the collectors on one registerer, told apart by the feed label.
type metrics struct {
	rows, txns, conflicts, dropped, deadLettered prometheus.Counter
	lockRetries                                  prometheus.Counter
	lagSeconds, lagBytesG, connectedG            prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, feed string) (*metrics, error) {
	counter := func(name, help string) (prometheus.Counter, error) {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "votr", Subsystem: "sink", Name: name, Help: help}, []string{"feed"})
		v, err := register(reg, v)
		if err != nil {
			return nil, err
		}
		return v.WithLabelValues(feed), nil
	}
	gauge := func(name, help string) (prometheus.Gauge, error) {
		v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "votr", Subsystem: "sink", Name: name, Help: help}, []string{"feed"})
		v, err := register(reg, v)
		if err != nil {
			return nil, err
		}
		return v.WithLabelValues(feed), nil
	}
	m := &metrics{}
	var err error
	for _, c := range []struct {
		dst        *prometheus.Counter
		name, help string
	}{
		{&m.rows, "rows_total", "Source row changes applied."},
		{&m.txns, "txns_total", "Source transactions applied."},
		{&m.conflicts, "conflicts_total", "Row changes whose target differed from their old image (merged)."},
		{&m.dropped, "dropped_total", "Conflicting row changes a merge dropped."},
		{&m.deadLettered, "dead_lettered_total", "Row changes parked in votr.dead_letters."},
		{&m.lockRetries, "lock_retries_total", "Groups applied again after a deadlock, lock timeout or serialization failure."},
	} {
		if *c.dst, err = counter(c.name, c.help); err != nil {
			return nil, err
		}
	}
	for _, g := range []struct {
		dst        *prometheus.Gauge
		name, help string
	}{
		{&m.lagSeconds, "lag_seconds", "Source commit to target commit of the last applied transaction."},
		{&m.lagBytesG, "lag_bytes", "Source WAL not yet processed by the feed."},
		{&m.connectedG, "connected", "1 while the feed is streaming."},
	} {
		if *g.dst, err = gauge(g.name, g.help); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// register adds c to reg, or returns the collector another feed registered.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

func (m *metrics) add(st groupStats, lag time.Duration) {
	m.rows.Add(float64(st.rows))
	m.txns.Add(float64(st.txns))
	m.conflicts.Add(float64(st.conflicts))
	m.dropped.Add(float64(st.dropped))
	m.deadLettered.Add(float64(st.deadLettered))
	m.lagSeconds.Set(lag.Seconds())
}

func (m *metrics) lockRetried() { m.lockRetries.Inc() }

func (m *metrics) lagBytes(n int64) { m.lagBytesG.Set(float64(n)) }

func (m *metrics) connected(c bool) {
	if c {
		m.connectedG.Set(1)
	} else {
		m.connectedG.Set(0)
	}
}
