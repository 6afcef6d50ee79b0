package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/runner"
)

var commands = map[string]func(context.Context, *invocation, *env) int{
	"plan":    cmdPlan,
	"apply":   cmdApply,
	"destroy": cmdDestroy,
	"check":   cmdCheck,
	"sink":    cmdSink,
	"replay":  cmdReplay,
	"state":   cmdState,
}

// cmdState is `votr state rm REGION...`: forget regions whose server is
// gone for good, so destroy no longer looks for them.
func cmdState(ctx context.Context, inv *invocation, e *env) int {
	if len(inv.args) < 2 || inv.args[0] != "rm" {
		return fail(e, &usageError{"state", "want `votr state rm REGION...` (region ids, e.g. votr state rm 2)"})
	}
	var ids []int
	for _, a := range inv.args[1:] {
		id, err := strconv.Atoi(a)
		if err != nil || id < 0 {
			return fail(e, &usageError{"state", fmt.Sprintf("%q is not a region id; give region ids, e.g. votr state rm 2", a)})
		}
		ids = append(ids, id)
	}
	s, err := open("state", inv, e, false)
	if err != nil {
		return fail(e, err)
	}
	if err := s.runner.StateRm(ids); err != nil {
		return s.fail(e, err)
	}
	return exitOK
}

func cmdPlan(ctx context.Context, inv *invocation, e *env) int {
	s, err := open("plan", inv, e, false)
	if err != nil {
		return fail(e, err)
	}
	plan, err := s.runner.Plan(ctx, s.topo)
	if err != nil {
		return s.fail(e, err)
	}
	if inv.json {
		err = plan.WriteJSON(s.out)
	} else {
		err = plan.WriteText(s.out)
	}
	if err != nil {
		return s.fail(e, err)
	}
	if inv.detailedExitcode && !plan.Empty() {
		return exitChanges
	}
	return exitOK
}

func cmdApply(ctx context.Context, inv *invocation, e *env) int {
	e.graceful.Store(true)
	s, err := open("apply", inv, e, inv.autoApprove)
	if err != nil {
		return fail(e, err)
	}
	defer s.closeUI()
	var run *runner.RunOptions
	if !inv.noRun {
		run = &runner.RunOptions{Duration: inv.duration, MaxBallots: inv.maxBallots, ReportEvery: inv.reportEvery, FailFast: inv.failFast, NoSinks: inv.noSinks, MetricsAddr: s.settings.MetricsAddr}
	}
	res, err := s.runner.Apply(ctx, s.topo, run)
	if err != nil {
		if errors.Is(err, runner.ErrCancelled) {
			fmt.Fprintln(s.out, "\nApply cancelled.")
		}
		return s.fail(e, err)
	}
	if res.Run == nil {
		return exitOK
	}
	if !res.Run.OK {
		fmt.Fprintln(s.out, "\nThe run did NOT prove convergence (see above).")
		return exitError
	}
	return exitOK
}

func cmdDestroy(ctx context.Context, inv *invocation, e *env) int {
	s, err := open("destroy", inv, e, inv.autoApprove)
	if err != nil {
		return fail(e, err)
	}
	topo := s.topo
	if topo == nil {
		// The recorded topology holds the URLs with their passwords (the
		// state keeps them redacted); use it if it still loads.
		if path := s.runner.RecordedTopology(); path != "" {
			if t, err := config.Load(path, os.LookupEnv); err == nil {
				topo = t
				s.out.(*scrubber).secrets = topologySecrets(t)
			} else {
				s.log.Info("the topology file of the last apply does not load; destroying from the recorded state alone", "file", path)
			}
		}
	}
	if _, err := s.runner.Destroy(ctx, topo); err != nil {
		if errors.Is(err, runner.ErrCancelled) {
			fmt.Fprintln(s.out, "\nDestroy cancelled.")
		}
		return s.fail(e, err)
	}
	return exitOK
}

func cmdCheck(ctx context.Context, inv *invocation, e *env) int {
	s, err := open("check", inv, e, false)
	if err != nil {
		return fail(e, err)
	}
	defer s.closeUI()
	rep, err := s.runner.Check(ctx, s.topo)
	if err != nil {
		return s.fail(e, err)
	}
	if inv.json {
		err = rep.WriteJSON(s.out)
	} else {
		err = rep.WriteText(s.out)
	}
	if err != nil {
		return s.fail(e, err)
	}
	if err := s.serveCheck(ctx, e); err != nil {
		return s.fail(e, err)
	}
	if !rep.OK() {
		return exitError
	}
	return exitOK
}

func cmdSink(ctx context.Context, inv *invocation, e *env) int {
	e.graceful.Store(true)
	s, err := open("sink", inv, e, false)
	if err != nil {
		return fail(e, err)
	}
	if err := s.runner.Sink(ctx, s.topo, inv.feed, s.settings.MetricsAddr); err != nil {
		return s.fail(e, err)
	}
	return exitOK
}

func cmdReplay(ctx context.Context, inv *invocation, e *env) int {
	s, err := open("replay", inv, e, false)
	if err != nil {
		return fail(e, err)
	}
	res, err := s.runner.Replay(ctx, s.topo, inv.feed)
	if err != nil {
		return s.fail(e, err)
	}
	for _, r := range res {
		if r.StillParked > 0 {
			fmt.Fprintln(s.out, "\nSome changes are still parked: the script dead-letters them again; fix it and run replay again.")
			return exitError
		}
	}
	return exitOK
}

// fail prints an error through the session's scrubbed output.
func (s *session) fail(e *env, err error) int {
	if s.console != nil {
		s.console.Keep()
	}
	return fail(&env{stderr: &scrubber{w: e.stderr, secrets: s.out.(*scrubber).secrets}}, err)
}
