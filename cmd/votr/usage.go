package main

// The help texts. Each says what the command does, what FILE is, every flag,
// and shows examples a new user can copy.

const mainUsage = `votr sets up, runs and proves a multi-region active-active replication
workload (VOTR) on PostgreSQL, declared in a YAML topology file.

Usage:
  votr COMMAND [FILE] [flags]

Commands:
  plan FILE              show what apply would create, change or remove (touches nothing)
  apply FILE             converge databases, schema and feeds, then run sinks and workers
  destroy [FILE]         remove everything apply created (without FILE: what the last apply recorded)
  check FILE             print the convergence report of the live regions
  sink FILE --feed S:D   run the sink of one feed alone (e.g. --feed 1:0 is spoke 1 → hub)
  replay FILE [--feed S:D]  re-apply the changes parked in votr.dead_letters, after fixing the script
  state rm REGION...     forget regions whose server is gone for good (touches no server)
  version                print votr's version
  help [COMMAND]         show this help, or a command's

FILE is a topology file (see docs/topology.md); examples/local.yaml is the
original demo: a hub and three spokes on a PostgreSQL server votr manages.

Examples:
  votr plan examples/local.yaml
  votr apply examples/local.yaml --auto-approve --duration 1m
  kill -HUP PID        # PID of the running apply, after editing its file: add or remove spokes online
  votr check examples/local.yaml
  votr destroy --auto-approve

Run 'votr help COMMAND' for a command's flags.
`

const settingsUsage = `
Process settings (every command; flags override VOTR_* variables):
  --state-dir DIR        state file, apply lock and managed servers' data (VOTR_STATE_DIR, default .votr)
  --log-format FORMAT    text or json (VOTR_LOG_FORMAT, default text)
  --log-level LEVEL      debug, info, warn or error (VOTR_LOG_LEVEL, default info)
  --metrics-addr ADDR    serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9187 (VOTR_METRICS_ADDR)
  --pg-bin DIR           directory of initdb, pg_ctl and postgres for managed servers (VOTR_PG_BIN, default: search)
`

var commandUsage = map[string]string{
	"plan": `Usage: votr plan FILE [flags]

Checks the topology FILE, inspects the live servers and databases it names,
and prints what 'votr apply FILE' would do, like Terraform:
  + create   ~ change (complete or start)   - destroy
ending with "Plan: N to add, M to change, K to destroy."

plan changes nothing. A managed server that is stopped stays stopped: its
regions are planned from the recorded state (the notes say so) and apply
starts it. Databases of another deployment (state dir) are named in the
notes. Passwords are never printed.

Flags:
  --json                 print the plan as JSON
  --detailed-exitcode    exit 0 when there is nothing to do, 2 when there are changes, 1 on error
  --take-over            show the plan of 'apply --take-over'
` + settingsUsage + `
Examples:
  votr plan examples/local.yaml
  votr plan examples/local.yaml --json --detailed-exitcode
`,

	"apply": `Usage: votr apply FILE [flags]

Converges every resource of the topology FILE, then runs the workload:
  1. prints the plan (as 'votr plan FILE' would) and asks for confirmation:
     type yes. Without a terminal, --auto-approve is required.
  2. creates what is missing, in order: managed servers, region databases,
     schema and candidates in every region, replication slots, feed
     checkpoints; a feed whose source already has data (a spoke joining a
     hub that has ballots) gets its slot with an exported snapshot and a
     backfill: the target is given the source's rows as of that snapshot,
     with progress shown. Feeds whose slot was dropped or invalidated, or
     whose target lost a table, are re-synced the same way. Removes the
     feeds no longer in FILE (a removed region's database stays until
     destroy). Each step is idempotent and recorded in the state dir, so an
     apply that was stopped (or killed) half-way finishes the job when run
     again.
  3. runs one sink per feed, the workers of every spoke and a validation loop
     in every region, with a live status (on a terminal) or a status log
     line every 10s, showing the WAL each slot retains.
  4. on SIGHUP: applies FILE as it is now without stopping the run: spokes
     removed from it stop (their last ballots drained to the hub) and lose
     their feeds; spokes added are created, backfilled, and start.
  5. on ^C, SIGTERM, after --duration or once --max-ballots are cast: stops
     the workers, lets the feeds drain (up to drainDelay), prints the
     convergence report and exits 0 only if every check holds. A second ^C stops at once (nothing is
     half-applied; 'votr check FILE' reports later).

Only one apply (or destroy) runs per state dir at a time.

Flags:
  --auto-approve         do not ask for confirmation
  --duration D           run the workload for D (e.g. 30s, 5m), then drain and report
  --max-ballots N        cast exactly N ballots in all (all regions' workers share them), then
                         drain and report; exit 0 only if converged with N ballots in every
                         region (the topology's maxBallots; this flag overrides it)
  --report-every D       every D, log per working region the ballots inserted in that
                         period (the live status shows the last period's count); default
                         the topology's workload.reportEvery (5s)
  --fail-fast            stop at the first invariant violation a validation loop sees,
                         naming region, candidate and snapshot; exit 1 (workload.failFast)
  --no-sinks             run no sinks in this process; run 'votr sink FILE --feed S:D'
                         for each feed yourself (other processes or machines)
  --no-run               converge the resources and exit, without running sinks or workers
  --take-over            change and use databases another deployment (state dir) created,
                         recording them as this one's; without it apply refuses them
  --drop-undrained       remove the feeds of spokes that left the topology even where their
                         rows cannot first be brought to the hub (their server is gone or
                         unreachable); without it apply refuses, naming what would be lost
  --ui ADDR              serve the live web view at http://ADDR/ (VOTR_UI_ADDR; default off): the
                         topology, its feeds, per-region table, charts and the final report;
                         JSON at /api/status (docs/ui.md). Loopback (127.0.0.1:8080) unless you
                         name an interface by its IP; 0.0.0.0 and an empty host are refused
` + settingsUsage + `
Examples:
  votr apply examples/local.yaml
  votr apply examples/local.yaml --auto-approve --duration 1m --ui 127.0.0.1:8080
  votr apply examples/local.yaml --auto-approve --duration 1m
  kill -HUP PID        # PID of the running apply, after editing its file: add or remove spokes online
  votr apply examples/two-dc.yaml --no-sinks      # then: votr sink examples/two-dc.yaml --feed 1:0, --feed 0:1
`,

	"destroy": `Usage: votr destroy [FILE] [flags]

Removes everything apply created for the topology FILE: the feeds'
replication slots and origins, the votr region databases (with their
publications and data) and the managed local servers (stopped, data
removed). Without FILE it uses what the last apply in this state dir
recorded. Databases that votr did not create are left alone.

destroy refuses, naming the process, while a feed's replication slot is in
use: stop 'votr apply' and 'votr sink' first. It asks for confirmation like
apply.

A database another deployment (state dir) created is refused unless
--take-over is given. A server that cannot be reached makes destroy refuse,
removing nothing; with --skip-unreachable it removes everything else and
keeps the unreachable server's regions recorded (votr state rm forgets them).

Flags:
  --auto-approve         do not ask for confirmation
  --take-over            also remove databases another deployment created
  --skip-unreachable     go on without the servers that cannot be reached; say what was left
` + settingsUsage + `
Examples:
  votr destroy
  votr destroy --skip-unreachable
  votr destroy examples/local.yaml --auto-approve
`,

	"check": `Usage: votr check FILE [flags]

Reads every region of the topology FILE (each in one snapshot) and prints
the convergence report: per region its ballots, sum of totals, invariant,
order-independent digests and whether they match the hub; per feed the last
applied position, lag, rows applied, conflicts merged and dead letters.
Exits 0 only if the invariant holds everywhere and every region matches the
hub. Run it once the workers have stopped and the feeds have drained.

check changes nothing. A managed server that is stopped is started on its
recorded port to be read and stopped again; if another program took that
port, check refuses and says how to go on (only apply moves a server).

Flags:
  --json                 print the report as JSON
  --ui ADDR              then serve it as the live web view at http://ADDR/ (VOTR_UI_ADDR),
                         read again every few seconds, until ^C (see apply --ui)
` + settingsUsage + `
Examples:
  votr check examples/local.yaml
  votr check examples/local.yaml --json
  votr check examples/local.yaml --ui 127.0.0.1:8080
`,

	"sink": `Usage: votr sink FILE --feed S:D [flags]

Runs the sink of one feed of the topology FILE until ^C or SIGTERM: it
streams region S's replication slot and applies every transaction to region
D exactly once, merging conflicts with the topology's script. S:D names the
feed by region ids: 1:0 is spoke 1 → hub, 0:1 is hub → spoke 1. Use it with
'votr apply FILE --no-sinks' to spread feeds over processes or machines;
'votr apply' must have created the feed's slot first. With
sink.sharedHubSlot: true the hub's outbound feeds read one slot, so they run
together, in one process: --feed 0:*.

Flags:
  --feed S:D             the feed to run (required); 0:* the hub's outbound
                         feeds, with sink.sharedHubSlot
` + settingsUsage + `
Examples:
  votr sink examples/local.yaml --feed 1:0
  votr sink examples/local.yaml --feed 0:1 --metrics-addr 127.0.0.1:9188
`,

	"replay": `Usage: votr replay FILE [--feed S:D] [flags]

Re-applies the changes a feed parked in its target's votr.dead_letters
(onScriptError: deadletter) because their merge kept failing. Fix the merge
script first: each parked change, oldest first, goes through the script of
FILE against the target row as it is now, and is marked replayed, all in one
target transaction per feed. If the script still fails nothing of that feed
is replayed and the error names the parked change; a change the script
parks again stays parked (exit 1). It may run while the sinks run. Then let
the feeds carry the replayed writes to the other regions (votr apply FILE)
and run votr check FILE. See docs/operating.md.

Flags:
  --feed S:D             replay only this feed's parked changes (default: every feed)
` + settingsUsage + `
Examples:
  votr replay examples/local.yaml
  votr replay examples/local.yaml --feed 1:0
`,

	"state": `Usage: votr state rm REGION... [flags]

Forgets regions recorded in the state dir (by region id), with their
servers' slots, so that destroy stops looking for them: for a server gone
for good. Nothing on any server is touched; whatever is still there is no
longer votr's to remove.
` + settingsUsage + `
Examples:
  votr state rm 2
`,

	"version": `Usage: votr version

Prints votr's version and the Go version it was built with.
`,

	"help": `Usage: votr help [COMMAND]

Shows the overview, or the usage of COMMAND (plan, apply, destroy, check,
sink, replay, version).
`,
}
