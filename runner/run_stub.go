//go:build !votrsink

package runner

import (
	"context"
	"errors"

	"github.com/votr-dev/votr/config"
)

// RunOptions tune the run after apply converged.
type RunOptions struct{}

// RunResult is what a run ended with.
type RunResult struct{}

func (r *Runner) run(ctx context.Context, t *config.Topology, o RunOptions) (*RunResult, error) {
	return nil, errors.New("running sinks and workers is not built yet")
}
