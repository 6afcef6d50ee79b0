#!/usr/bin/env bash
# bench-ui.sh: what the live web view (--ui) costs a run. It runs the same
# apply (hub + 3 spokes on one managed server, one worker per spoke at full
# speed) ROUNDS times in each of four ways, alternating: without --ui (off);
# with --ui and no page open (ui); with --ui and curl reading its event
# stream, so votr computes every status but nothing renders it (events);
# with --ui and a headless Chromium showing the page (browser). Per run it
# prints the workers' txn/s, the ballots/s the hub received, and the CPU
# seconds of the votr process (and of Chromium, which shares the machine). Usage: bash scripts/bench-ui.sh
# (DUR=30s ROUNDS=2 INTERVAL=0s by default: INTERVAL is the workers' pause,
# 100ms is the original pace; needs chromium, see ensure-chromium.sh).
set -euo pipefail
DUR=${DUR:-30s}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-18181}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
chmod 755 "$dir"
trap '"$dir/votr" destroy --auto-approve --state-dir "$dir/state" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
(cd "$root" && go build -o "$dir/votr" ./cmd/votr)
cat >"$dir/topo.yaml" <<YAML
hub: {connect: local}
spokes: [{id: 1, connect: local}, {id: 2, connect: local}, {id: 3, connect: local}]
candidates: 128
workers: 1
drainDelay: 2m
script: $root/scripts/votr.ts
workload: {interval: ${INTERVAL:-0s}}
YAML
# Every run starts from empty regions: tables that grow from run to run
# slow the later runs down more than anything measured here.
fresh() {
	"$dir/votr" destroy --auto-approve --state-dir "$dir/state" >/dev/null 2>&1 || true
	"$dir/votr" apply "$dir/topo.yaml" --auto-approve --no-run --state-dir "$dir/state" >/dev/null 2>&1
}

run() {
	local mode=$1 log="$dir/$1.log" args=() browser="" watcher=""
	fresh
	[ "$mode" != off ] && args=(--ui "127.0.0.1:$PORT")
	/usr/bin/time -f "%U %S" -o "$dir/time" "$dir/votr" apply "$dir/topo.yaml" --auto-approve --duration "$DUR" \
		--state-dir "$dir/state" "${args[@]}" >"$log" 2>&1 &
	local pid=$!
	[ "$mode" != off ] && until grep -q "Web view:" "$log"; do sleep 0.1; done
	if [ "$mode" = events ]; then
		curl -sN "http://127.0.0.1:$PORT/api/events" >/dev/null 2>&1 &
		watcher=$!
	fi
	if [ "$mode" = browser ]; then
		/usr/bin/time -f "%U %S" -o "$dir/btime" chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
			--disable-component-update --disable-sync --user-data-dir="$dir/chromium" --remote-debugging-port=0 \
			"http://127.0.0.1:$PORT/" >/dev/null 2>&1 &
		browser=$!
	fi
	wait "$pid" || { echo "apply failed:"; tail -20 "$log"; exit 1; }
	[ -n "$watcher" ] && { kill "$watcher" 2>/dev/null || true; wait "$watcher" 2>/dev/null || true; }
	local bcpu=""
	if [ -n "$browser" ]; then
		pkill -TERM -P "$browser" 2>/dev/null || true
		wait "$browser" 2>/dev/null || true
		bcpu=$(awk '{printf "   Chromium CPU %5.1f s", $1 + $2}' "$dir/btime" 2>/dev/null || true)
	fi
	local txns elapsed hub cpu
	read -r txns elapsed < <(sed -nE 's/^Workers committed ([0-9]+) transactions in ([0-9.]+)s.*/\1 \2/p' "$log")
	hub=$(awk '$1 == "0" && $2 == "(hub)" {print $3}' "$log" | tail -1)
	cpu=$(awk '{print $1 + $2}' "$dir/time")
	grep -q "converged: all 4 regions identical" "$log" || { echo "$mode: did not converge"; tail -20 "$log"; exit 1; }
	printf "%-8s %8.1f txn/s %9.1f ballots/s at the hub   votr CPU %5.1f s%s\n" "$mode" \
		"$(echo "$txns / $elapsed" | bc -l)" "$(echo "$hub / $elapsed" | bc -l)" "$cpu" "$bcpu"
}
echo "each run: $DUR of workers, hub + 3 spokes, one worker per spoke, pause ${INTERVAL:-0s}; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$ROUNDS"); do
	run off
	run ui
	run events
	run browser
done
