package runner

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/sink"
)

// feedConfig describes feed f of topology t to the sink package: the one
// place a sink.Config is built from a topology, so run, runset and backfill
// give every sink the same script and options. reg may be nil (no metrics).
func (r *Runner) feedConfig(t *config.Topology, f config.Feed, srcDSN, dstDSN string, log *slog.Logger, reg prometheus.Registerer) sink.Config {
	return sink.Config{
		SourceID: f.Source.ID, TargetID: f.Target.ID,
		SourceDB: f.Source.Database, TargetDB: f.Target.Database,
		SourceDSN: srcDSN, TargetDSN: dstDSN,
		Program: t.Program, Options: t.Sink, Logger: log, Registerer: reg,
		StreamName: r.streamName(),
	}
}

// The application_name of votr's replication connections (streamPrefix)
// and of the sessions casting ballots (workersPrefix) add the deployment
// and the process id (processName), so that a later process of the same
// deployment can tell a session whose process was killed (busy.go).
const (
	streamPrefix  = "votr-sink"
	workersPrefix = "votr-workers"
)

func (r *Runner) streamName() string { return r.processName(streamPrefix) }

// processName is "PREFIX DEPLOYMENT pid N" ("" without a deployment).
func (r *Runner) processName(prefix string) string {
	st, err := r.loadState()
	if err != nil || st.Deployment == "" {
		return ""
	}
	return fmt.Sprintf("%s %s pid %d", prefix, st.Deployment, os.Getpid())
}
