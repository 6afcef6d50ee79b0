package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/ui"
)

// openUI opens the web view when --ui or VOTR_UI_ADDR asks for it (apply
// and check only; nil otherwise) and prints its URL first thing: on out for
// apply, on stderr for check (whose stdout may be JSON).
func openUI(cmd string, inv *invocation, st config.Settings, secrets []string, log *slog.Logger, out, stderr io.Writer) (*ui.Server, error) {
	if st.UIAddr == "" || (cmd != "apply" && cmd != "check") {
		return nil, nil
	}
	if cmd == "apply" && inv.noRun {
		// Nothing would run to be shown.
		log.Info("--no-run: no web view to serve")
		return nil, nil
	}
	view, err := ui.Listen(st.UIAddr, ui.Options{Logger: log, Secrets: secrets})
	if err != nil {
		return nil, err
	}
	w := out
	if cmd == "check" {
		w = stderr
	}
	fmt.Fprintf(w, "Web view: %s\n", view.URL())
	return view, nil
}

// closeUI pushes the last status to the open pages and stops serving.
func (s *session) closeUI() {
	if s.view != nil {
		s.view.Close()
	}
}

// serveCheck keeps `check --ui` serving the report, read again every few
// seconds, until interrupted.
func (s *session) serveCheck(ctx context.Context, e *env) error {
	if s.view == nil {
		return nil
	}
	fmt.Fprintf(e.stderr, "Serving the web view at %s until interrupted (^C).\n", s.view.URL())
	return s.runner.ServeCheck(ctx, s.topo)
}
