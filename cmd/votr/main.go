// Command votr is the command line of votr: it parses the command and its
// flags, loads the topology and the process settings, and hands over to
// package runner. See `votr help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/internal/suggest"
	"github.com/votr-dev/votr/runner"
	"github.com/votr-dev/votr/ui"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit codes (SPEC §2): 0 success; 1 error or a report that does not hold;
// 2 only for `plan --detailed-exitcode` with changes pending.
const (
	exitOK      = 0
	exitError   = 1
	exitChanges = 2
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	interrupt := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	reload := make(chan struct{}, 1)
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	env := &env{
		stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr,
		stdinTerminal:  term.IsTerminal(int(os.Stdin.Fd())),
		stdoutTerminal: term.IsTerminal(int(os.Stdout.Fd())),
		width: func() int {
			w, _, err := term.GetSize(int(os.Stdout.Fd()))
			if err != nil {
				return 0
			}
			return w
		},
		interrupt: interrupt,
		reload:    reload,
	}
	go func() {
		// SIGHUP asks a running apply to apply the topology file as it is
		// now; one pending request is enough however many arrive.
		for range hups {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	go func() {
		// The first signal asks for a graceful stop (commands that run
		// nothing long just end); the second stops everything at once.
		<-sigs
		if env.graceful.Load() {
			fmt.Fprintln(os.Stderr, "\nvotr: stopping: draining the feeds; interrupt again to stop at once")
			close(interrupt)
			<-sigs
		}
		cancel()
	}()
	os.Exit(run(ctx, os.Args[1:], env))
}

// env is what run needs from the process, so tests can drive it.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	stdinTerminal  bool
	stdoutTerminal bool
	width          func() int
	interrupt      <-chan struct{}
	// reload receives on SIGHUP (nil in tests that do not send it).
	reload <-chan struct{}
	// graceful is set by commands whose first interrupt drains rather than
	// cancels (apply, sink).
	graceful atomic.Bool
}

// usageError is a command line that cannot be run: its message is printed
// with the command's usage.
type usageError struct{ cmd, msg string }

func (e *usageError) Error() string { return e.msg }

// run executes one command line and returns the exit code.
func run(ctx context.Context, args []string, e *env) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, mainUsage)
		return exitError
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "--help", "-help":
		return help(rest, e)
	case "version", "--version":
		if len(rest) > 0 && !isHelp(rest[0]) {
			return fail(e, &usageError{"version", "votr version takes no arguments"})
		}
		if len(rest) > 0 {
			fmt.Fprint(e.stdout, commandUsage["version"])
			return exitOK
		}
		fmt.Fprintf(e.stdout, "votr %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return exitOK
	}
	cmd, ok := commands[name]
	if !ok {
		msg := fmt.Sprintf("unknown command %q", name)
		if s := suggest.Closest(name, []string{"plan", "apply", "destroy", "check", "sink", "replay", "state", "version", "help"}); s != "" {
			msg += fmt.Sprintf("; did you mean %q?", s)
		}
		fmt.Fprintf(e.stderr, "votr: %s\n\n%s", msg, mainUsage)
		return exitError
	}
	inv, err := parse(name, rest)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(e.stdout, commandUsage[name])
		return exitOK
	}
	if err != nil {
		return fail(e, err)
	}
	return cmd(ctx, inv, e)
}

func isHelp(a string) bool { return a == "-h" || a == "--help" || a == "-help" || a == "help" }

func help(args []string, e *env) int {
	if len(args) == 0 {
		fmt.Fprint(e.stdout, mainUsage)
		return exitOK
	}
	if u, ok := commandUsage[args[0]]; ok && len(args) == 1 {
		fmt.Fprint(e.stdout, u)
		return exitOK
	}
	fmt.Fprintf(e.stderr, "votr help: unknown command %q\n\n%s", strings.Join(args, " "), mainUsage)
	return exitError
}

// fail prints an error (with the usage for a bad command line) and
// returns the error exit code.
func fail(e *env, err error) int {
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(e.stderr, "votr %s: %s\n\n%s", ue.cmd, ue.msg, commandUsage[ue.cmd])
		return exitError
	}
	if es := config.AsErrors(err); len(es) > 0 {
		fmt.Fprintf(e.stderr, "Error: the topology file has %d problem(s); nothing was touched:\n", len(es))
		for _, te := range es {
			fmt.Fprintf(e.stderr, "  %s\n", te)
		}
		return exitError
	}
	fmt.Fprintf(e.stderr, "Error: %s\n", strings.TrimSpace(err.Error()))
	return exitError
}

// invocation is a parsed command line.
type invocation struct {
	file string
	// settings flags, "" when not given
	stateDir, logFormat, logLevel, metricsAddr, pgBin, uiAddr string
	// command flags
	json, detailedExitcode, autoApprove, noSinks, noRun, failFast bool
	duration, reportEvery                                         time.Duration
	takeOver, skipUnreachable, dropUndrained                      bool
	maxBallots                                                    int
	feed                                                          string
	args                                                          []string        // state: the subcommand and its arguments
	set                                                           map[string]bool // flags given
}

// parse reads a command's flags and its FILE argument; flags may come
// before or after FILE (votr apply FILE --auto-approve).
func parse(cmd string, args []string) (*invocation, error) {
	inv := &invocation{set: map[string]bool{}}
	fs := flag.NewFlagSet("votr "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&inv.stateDir, "state-dir", "", "")
	fs.StringVar(&inv.logFormat, "log-format", "", "")
	fs.StringVar(&inv.logLevel, "log-level", "", "")
	fs.StringVar(&inv.metricsAddr, "metrics-addr", "", "")
	fs.StringVar(&inv.pgBin, "pg-bin", "", "")
	switch cmd {
	case "plan":
		fs.BoolVar(&inv.json, "json", false, "")
		fs.BoolVar(&inv.detailedExitcode, "detailed-exitcode", false, "")
		fs.BoolVar(&inv.takeOver, "take-over", false, "")
	case "apply":
		fs.StringVar(&inv.uiAddr, "ui", "", "")
		fs.BoolVar(&inv.autoApprove, "auto-approve", false, "")
		fs.DurationVar(&inv.duration, "duration", 0, "")
		fs.IntVar(&inv.maxBallots, "max-ballots", 0, "")
		fs.DurationVar(&inv.reportEvery, "report-every", 0, "")
		fs.BoolVar(&inv.failFast, "fail-fast", false, "")
		fs.BoolVar(&inv.noSinks, "no-sinks", false, "")
		fs.BoolVar(&inv.noRun, "no-run", false, "")
		fs.BoolVar(&inv.takeOver, "take-over", false, "")
		fs.BoolVar(&inv.dropUndrained, "drop-undrained", false, "")
	case "destroy":
		fs.BoolVar(&inv.autoApprove, "auto-approve", false, "")
		fs.BoolVar(&inv.takeOver, "take-over", false, "")
		fs.BoolVar(&inv.skipUnreachable, "skip-unreachable", false, "")
	case "check":
		fs.StringVar(&inv.uiAddr, "ui", "", "")
		fs.BoolVar(&inv.json, "json", false, "")
	case "sink", "replay":
		fs.StringVar(&inv.feed, "feed", "", "")
	}
	var files []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &usageError{cmd, flagProblem(err)}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if isHelp(args[0]) && args[0] != "help" {
			return nil, flag.ErrHelp
		}
		files = append(files, args[0])
		args = args[1:]
	}
	fs.Visit(func(f *flag.Flag) { inv.set[f.Name] = true })
	switch {
	case cmd == "state":
		inv.args = files
	case len(files) > 1:
		return nil, &usageError{cmd, fmt.Sprintf("one topology FILE expected, got %d: %s", len(files), strings.Join(files, " "))}
	case len(files) == 0 && cmd != "destroy":
		return nil, &usageError{cmd, "missing the topology FILE, e.g. votr " + cmd + " examples/local.yaml"}
	case len(files) == 1:
		inv.file = files[0]
	}
	if cmd == "apply" && inv.set["duration"] && inv.duration <= 0 {
		return nil, &usageError{cmd, fmt.Sprintf("--duration %s: give a positive duration such as 30s or 5m", inv.duration)}
	}
	if cmd == "apply" && inv.set["report-every"] && inv.reportEvery <= 0 {
		return nil, &usageError{cmd, fmt.Sprintf("--report-every %s: give a positive duration such as 5s", inv.reportEvery)}
	}
	if cmd == "apply" && inv.set["max-ballots"] && inv.maxBallots <= 0 {
		return nil, &usageError{cmd, fmt.Sprintf("--max-ballots %d: give a positive number of ballots", inv.maxBallots)}
	}
	if cmd == "apply" && inv.noRun && (inv.noSinks || inv.set["duration"] || inv.set["max-ballots"]) {
		return nil, &usageError{cmd, "--no-run runs nothing: it cannot be combined with --no-sinks, --duration or --max-ballots"}
	}
	if cmd == "sink" && inv.feed == "" {
		return nil, &usageError{cmd, "--feed S:D is required, e.g. --feed 1:0 for spoke 1 → hub"}
	}
	return inv, nil
}

// flagProblem rewords the flag package's errors.
func flagProblem(err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: "); ok {
		return fmt.Sprintf("unknown flag --%s", strings.TrimLeft(name, "-"))
	}
	if strings.Contains(msg, "flag needs an argument") {
		return msg + " (write --flag VALUE or --flag=VALUE)"
	}
	if strings.Contains(msg, "parse error") && strings.Contains(msg, "duration") {
		return msg + " (durations look like 30s, 5m, 1h30m)"
	}
	return msg
}

// settings are the VOTR_* variables overridden by the flags given.
func (inv *invocation) settings() (config.Settings, error) {
	s, err := config.LoadSettings()
	if err != nil {
		return s, err
	}
	for name, v := range map[string]*string{
		"state-dir": &s.StateDir, "log-format": &s.LogFormat, "log-level": &s.LogLevel,
		"metrics-addr": &s.MetricsAddr, "pg-bin": &s.PGBin, "ui": &s.UIAddr,
	} {
		if inv.set[name] {
			*v = map[string]string{
				"state-dir": inv.stateDir, "log-format": inv.logFormat, "log-level": inv.logLevel,
				"metrics-addr": inv.metricsAddr, "pg-bin": inv.pgBin, "ui": inv.uiAddr,
			}[name]
		}
	}
	return s, s.Validate()
}

// session is everything a command needs once its line is parsed.
type session struct {
	settings config.Settings
	topo     *config.Topology
	out      io.Writer
	log      *slog.Logger
	console  *runner.Console
	runner   *runner.Runner
	view     *ui.Server // the web view (--ui), or nil
}

// open loads the settings and the topology (when FILE is given), and sets
// up output: every writer drops the passwords of the topology's URLs, in
// case any layer ever quotes one.
func open(cmd string, inv *invocation, e *env, autoApprove bool) (*session, error) {
	st, err := inv.settings()
	if err != nil {
		return nil, err
	}
	var topo *config.Topology
	if inv.file != "" {
		if topo, err = config.Load(inv.file, os.LookupEnv); err != nil {
			return nil, err
		}
	}
	secrets := topologySecrets(topo)
	out := &scrubber{w: e.stdout, secrets: secrets}
	logw := io.Writer(&scrubber{w: e.stderr, secrets: secrets})
	var console *runner.Console
	if e.stdoutTerminal && (cmd == "apply" || cmd == "sink") {
		console = runner.NewConsole(e.stdout, e.width)
		out = &scrubber{w: console, secrets: secrets}
		logw = out
	}
	log := st.Logger(logw)
	view, err := openUI(cmd, inv, st, secrets, log, out, &scrubber{w: e.stderr, secrets: secrets})
	if err != nil {
		return nil, err
	}
	command := "votr " + cmd
	if inv.file != "" {
		command += " " + inv.file
	}
	r := runner.New(runner.Options{
		StateDir:        st.StateDir,
		BinDir:          st.PGBin,
		Logger:          log,
		Out:             out,
		In:              e.stdin,
		Terminal:        e.stdinTerminal,
		AutoApprove:     autoApprove,
		TakeOver:        inv.takeOver,
		SkipUnreachable: inv.skipUnreachable,
		DropUndrained:   inv.dropUndrained,
		Command:         command,
		Interrupt:       e.interrupt,
		Reload:          e.reload,
		Console:         console,
		UI:              view,
	})
	return &session{settings: st, topo: topo, out: out, log: log, console: console, runner: r, view: view}, nil
}

// topologySecrets are the passwords in the topology's connect URLs.
func topologySecrets(t *config.Topology) []string {
	if t == nil {
		return nil
	}
	var out []string
	for _, r := range t.Regions() {
		if p := config.Password(r.Connect); p != "" && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// scrubber replaces secrets in what passes through it. Callers write whole
// lines or documents at once, so a secret is never split across writes.
type scrubber struct {
	w       io.Writer
	secrets []string
}

func (s *scrubber) Write(p []byte) (int, error) {
	if len(s.secrets) == 0 {
		return s.w.Write(p)
	}
	text := string(p)
	for _, sec := range s.secrets {
		text = strings.ReplaceAll(text, sec, "xxxxx")
	}
	if _, err := io.WriteString(s.w, text); err != nil {
		return 0, err
	}
	return len(p), nil
}
