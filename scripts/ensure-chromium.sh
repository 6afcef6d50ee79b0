#!/usr/bin/env bash
# ensure-chromium.sh: make sure a Chromium browser is installed for the web
# view's browser test (ui/browser_test.go drives it headless). Quiet and quick
# when it is; as root it installs Debian's `chromium` package, otherwise it
# prints the one command to run and exits 1. VOTR_CHROMIUM names a binary to
# use instead.
set -euo pipefail

find_chromium() {
	local c
	if [ -n "${VOTR_CHROMIUM:-}" ] && [ -x "$VOTR_CHROMIUM" ]; then
		echo "$VOTR_CHROMIUM"; return 0
	fi
	for c in chromium chromium-browser google-chrome-stable google-chrome; do
		if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
	done
	return 1
}

install_cmd="apt-get update && apt-get install -y --no-install-recommends chromium fonts-dejavu-core"

if find_chromium >/dev/null; then
	exit 0
fi
if [ -n "${VOTR_CHROMIUM:-}" ]; then
	echo "ensure-chromium: VOTR_CHROMIUM=$VOTR_CHROMIUM is not an executable; looking elsewhere" >&2
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "ensure-chromium: Chromium not found (the web view's browser test needs it)." >&2
	echo "Install it with:  sudo sh -c '$install_cmd'" >&2
	echo "(or set VOTR_CHROMIUM to a Chromium or Chrome binary)" >&2
	exit 1
fi
echo "ensure-chromium: installing Debian's chromium package (about a minute)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
if ! find_chromium >/dev/null; then
	echo "ensure-chromium: installed chromium but still cannot find it on PATH; set VOTR_CHROMIUM" >&2
	exit 1
fi
