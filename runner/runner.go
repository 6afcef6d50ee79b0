// Package runner turns a topology into running regions: it inspects the live
// servers and databases into a plan.State (inspect.go), has package plan
// compute what to create, change or remove, carries the plan out
// idempotently while recording state for destroy (execute.go runs apply and
// destroy alike through the table in actions.go), and then runs the sinks,
// workers and validators until it is told to stop (run.go, by phase),
// ending with the convergence report.
package runner

import (
	"io"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/ui"
	"log/slog"
	"os"
)

// Options configure a Runner. The zero value of every field is usable except
// StateDir, which defaults to ".votr".
type Options struct {
	// StateDir holds managed servers' data, state.json and apply.lock.
	StateDir string
	// BinDir is where the PostgreSQL server binaries are ("" = search).
	BinDir string
	Logger *slog.Logger
	// Out receives plans, prompts and reports (default os.Stdout).
	Out io.Writer
	// In supplies the answer to confirmation prompts (default os.Stdin).
	In io.Reader
	// Terminal says In and Out are a terminal: prompts are allowed and the
	// live status is drawn in place.
	Terminal bool
	// AutoApprove skips the confirmation prompt of apply and destroy.
	AutoApprove bool
	// TakeOver lets apply and destroy change and remove databases (and
	// their slots and origins) that another deployment (state dir)
	// created, making them this one's; without it they refuse.
	TakeOver bool
	// SkipUnreachable lets destroy go on without the servers it cannot
	// reach: their regions stay recorded, and it says what it left.
	SkipUnreachable bool
	// DropUndrained lets apply remove the feeds into the hub of spokes
	// that left the topology when it cannot drain them first (their
	// server is gone, their slot invalidated, or the drain does not finish
	// within drainDelay): what those spokes committed and the hub lacks is
	// then given up. Without it apply refuses and says so.
	DropUndrained bool
	// Command is the command line recorded in the apply lock, so that a
	// second apply can say who holds it.
	Command string
	// FailAfter makes apply fail right after its k-th action (k > 0): tests
	// use it to check that an interrupted apply finishes when run again.
	FailAfter int
	// Interrupt, when closed, asks for a graceful stop (the first ^C): apply
	// stops between actions; a run stops its workers, drains and reports.
	// Cancelling the context instead stops everything at once.
	Interrupt <-chan struct{}
	// Reload, on each receive during a run, applies the topology file as it
	// is now without stopping the run: spokes it dropped leave, spokes it
	// added are created, backfilled and join (cmd/votr sends on SIGHUP).
	Reload <-chan struct{}
	// Load reads a topology file for Reload (default config.Load with the
	// process environment).
	Load func(path string) (*config.Topology, error)
	// Console, when set, shows the live status in place (a terminal).
	// Without it the status is logged every StatusEvery.
	Console *Console
	// UI, when set, is the web view (--ui): a run and ServeCheck show
	// themselves on it.
	UI *ui.Server
}

// Runner carries out plans for one state directory.
type Runner struct {
	opts Options
	log  *slog.Logger
}

// New returns a Runner with opts (defaults filled in).
func New(opts Options) *Runner {
	if opts.StateDir == "" {
		opts.StateDir = ".votr"
	}
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	if opts.In == nil {
		opts.In = os.Stdin
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Runner{opts: opts, log: log}
}
