package main

// The CPU cost of a transaction at a measured pace: what the scaling curve
// is read against. Each worker transaction of N spokes is applied in N
// regions (the hub and the other spokes) and read by every walsender of
// the server, so its cost grows with N; where the sustained pace is what
// the machine's CPUs allow at that cost, the curve falls by the extra
// replication work, not by waits.

// postgresParts are the consumers of cpuOrder whose work the workload and
// the slots' layout give, whoever applies the changes: the walsenders
// reading the WAL, the workers' and probes' sessions, the servers'
// background processes. The bench process (sinks and the workers' client
// side) and the sinks' target sessions are the rest.
var postgresParts = []string{"walsenders", "worker sessions", "probe sessions", "server background"}

// postgresCeilingNote says what the postgres ceiling leaves out.
const postgresCeilingNote = "\"Without the bench process and sink sessions\": the CPU of the sinks and of the workers' client side left out, that of the walsenders, worker and probe sessions and the servers' background kept: more than any replicator reading these slots could sustain on this machine."

// txnCost is the machine's CPU per worker transaction in a window, and
// the pace the machine's CPUs would allow at that cost.
type txnCost struct {
	ms        map[string]float64 // CPU ms per transaction, by consumer (cpuOrder)
	total     float64            // CPU ms per transaction, every consumer
	perRegion float64            // total over the regions that apply each transaction
	// ceiling is the ballots/s at which this cost would take every CPU.
	ceiling float64
	// postgresCeiling is the same for PostgreSQL's own part of the cost
	// alone (postgresParts): more than any replicator reading these
	// slots could sustain here, its own work (and the workers' client
	// side) costing nothing.
	postgresCeiling float64
	// walRecords is the WAL records written per transaction, all servers;
	// walReads the records the walsenders read per transaction (wal.go).
	walRecords, walReads float64
}

// costOf divides a window's CPU by its transactions. The probes'
// transactions (at most maxProbeRate per second) are in the CPU but not
// in the count, so the cost is slightly high at low paces. ok is false for
// a window without transactions or CPU figures.
func costOf(w window, cpus int) (c txnCost, ok bool) {
	rate := w.txnRate()
	if rate <= 0 || len(w.cpu) == 0 || cpus <= 0 {
		return txnCost{}, false
	}
	c.ms = map[string]float64{}
	for _, k := range cpuOrder {
		c.ms[k] = w.cpu[k] * float64(cpus) * 1000 / rate
		c.total += c.ms[k]
	}
	if c.total <= 0 {
		return txnCost{}, false
	}
	c.perRegion = c.total / float64(max(w.spokes, 1))
	ballots := w.ballotRate() / rate
	c.ceiling = float64(cpus) * 1000 / c.total * ballots
	postgres := 0.0
	for _, k := range postgresParts {
		postgres += c.ms[k]
	}
	if postgres > 0 {
		c.postgresCeiling = float64(cpus) * 1000 / postgres * ballots
	}
	c.walRecords, c.walReads = w.wal.records/rate, w.wal.reads/rate
	return c, true
}
