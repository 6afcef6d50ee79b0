package runner

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
)

// ErrCancelled is returned when the user does not confirm.
var ErrCancelled = errors.New("cancelled: nothing was changed")

// execution is what carrying out a plan's actions works with.
type execution struct {
	t  *config.Topology // nil for a destroy without a topology file
	in *inspection      // the servers by key, and the snapshots slots export
	st *State
	// skipped are the servers a destroy could not reach and left out
	// (--skip-unreachable).
	skipped []string
}

// A procedure is a command that carries out a plan: apply or destroy. They
// differ in how the plan is made, printed and concluded; carryOut does the
// rest, the same way for both.
type procedure struct {
	// prepare computes the plan, under the lock.
	prepare func(ctx context.Context) (*plan.Plan, *execution, error)
	// locked is given the lock once it is held (nil: not needed).
	locked func(*lock)
	print  func(*plan.Plan) error
	// question asks for confirmation; refusal is the error without a
	// terminal to ask on.
	question, refusal string
	// refused runs when the user declined (nil: nothing to undo).
	refused func(ctx context.Context, x *execution)
	// onEmpty, when set, ends the procedure for a plan without actions;
	// unset, an empty plan goes through begin and then like any other.
	onEmpty func() error
	// begin runs before the first action (nil: nothing to do).
	begin func(x *execution) error
	// resumable: the state is saved after each action, so the procedure
	// may stop between actions (Interrupt, FailAfter) and be run again to
	// finish.
	resumable bool
	// finish runs after the last action (nil: nothing to do).
	finish  func() error
	summary func(*plan.Plan) string
	// then runs last, holding the lock shared (nil: nothing to do): plan
	// and check may read beside it, another apply or destroy may not.
	then func(ctx context.Context) error
}

// carryOut runs a procedure: lock, plan, print, confirm, execute the
// actions, summary. The plan returned is nil when nothing was carried out
// (an error or a refusal before the first action).
func (r *Runner) carryOut(ctx context.Context, pr procedure) (*plan.Plan, int, error) {
	changed := false
	lk, release, err := r.lockUntilDone(&changed)
	if err != nil {
		return nil, 0, err
	}
	defer release()
	if pr.locked != nil {
		pr.locked(lk)
	}

	p, x, err := pr.prepare(ctx)
	if err != nil {
		return nil, 0, err
	}
	defer x.in.closeExports(ctx)
	if err := pr.print(p); err != nil {
		return nil, 0, err
	}
	if p.Empty() && pr.onEmpty != nil {
		return p, 0, pr.onEmpty()
	}
	if !p.Empty() {
		if err := r.confirm(ctx, pr.question, pr.refusal); err != nil {
			if pr.refused != nil {
				pr.refused(ctx, x)
			}
			return nil, 0, err
		}
	}
	changed = true
	if pr.begin != nil {
		if err := pr.begin(x); err != nil {
			return nil, 0, err
		}
	}
	if !p.Empty() {
		fmt.Fprintln(r.opts.Out)
	}
	n, err := r.execute(ctx, x, p, pr.resumable)
	if err != nil {
		return p, n, err
	}
	if pr.finish != nil {
		if err := pr.finish(); err != nil {
			return p, n, err
		}
	}
	if !p.Empty() {
		fmt.Fprint(r.opts.Out, pr.summary(p))
	}
	if pr.then != nil {
		if err := lk.share(); err != nil {
			return p, n, err
		}
		return p, n, pr.then(ctx)
	}
	return p, n, nil
}

// execute carries out the plan's actions in order, printing one line per
// action (once it is done, so that log lines of the action, a server
// starting, never split it). It returns how many it executed.
func (r *Runner) execute(ctx context.Context, x *execution, p *plan.Plan, resumable bool) (int, error) {
	acts := r.acts()
	n := 0
	for i, a := range p.Actions {
		if resumable && interrupted(r.opts.Interrupt) {
			return n, fmt.Errorf("interrupted after %d of %d actions; run apply again to finish", i, len(p.Actions))
		}
		start := time.Now()
		if err := r.act(ctx, acts, x, a); err != nil {
			fmt.Fprintf(r.opts.Out, "  %s %s %s: FAILED\n", a.Op.Symbol(), a.Kind, a.Target)
			return n, fmt.Errorf("%s %s %s: %w", a.Op, a.Kind, a.Target, err)
		}
		fmt.Fprintf(r.opts.Out, "  %s %s %s: %s (%s)\n", a.Op.Symbol(), a.Kind, a.Target, a.Op.Done(), time.Since(start).Round(time.Millisecond))
		n++
		if !resumable {
			continue
		}
		if err := r.saveState(x.st); err != nil {
			return n, err
		}
		r.log.Debug("action done", "op", a.Op, "kind", a.Kind, "target", a.Target)
		if r.opts.FailAfter > 0 && i+1 == r.opts.FailAfter {
			return n, fmt.Errorf("injected failure after action %d (%s)", i+1, a)
		}
	}
	return n, nil
}

// act carries out one action with the function the table has for its kind
// and op.
func (r *Runner) act(ctx context.Context, acts map[string]kindActs, x *execution, a plan.Action) error {
	srv := x.in.servers[a.Server]
	if srv == nil {
		return fmt.Errorf("internal: server %s was not inspected", a.Server)
	}
	fn := acts[a.Kind].of(a.Op)
	if fn == nil {
		return fmt.Errorf("internal: no way to %s a %s", a.Op, a.Kind)
	}
	return fn(ctx, x, srv, a)
}

// confirm asks the user to type yes. Without a terminal it refuses with
// refusal (which says how to proceed) unless AutoApprove is set.
func (r *Runner) confirm(ctx context.Context, question, refusal string) error {
	if r.opts.AutoApprove {
		return nil
	}
	if !r.opts.Terminal {
		return errors.New(refusal)
	}
	fmt.Fprint(r.opts.Out, "\n"+question)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r.opts.In).ReadString('\n')
		answer <- strings.TrimSpace(line)
	}()
	select {
	case <-ctx.Done():
		fmt.Fprintln(r.opts.Out)
		return ErrCancelled
	case <-r.opts.Interrupt:
		// apply's first ^C only asks to drain: at the question there is
		// nothing to drain, and it means no.
		fmt.Fprintln(r.opts.Out)
		return ErrCancelled
	case a := <-answer:
		if a != "yes" {
			return ErrCancelled
		}
		return nil
	}
}

// interrupted reports whether ch (may be nil) is closed.
func interrupted(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
