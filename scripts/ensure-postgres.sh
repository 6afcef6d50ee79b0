#!/usr/bin/env bash
# ensure-postgres.sh: make sure the PostgreSQL server binaries (initdb, pg_ctl,
# postgres) that votr's managed local servers and tests need are installed.
# Quiet and quick when they are; as root it installs Debian's packages,
# otherwise it prints the one command to run and exits 1.
set -euo pipefail

has_server_bins() { [ -x "$1/initdb" ] && [ -x "$1/pg_ctl" ] && [ -x "$1/postgres" ]; }

find_bindir() {
	local d
	if [ -n "${VOTR_PG_BIN:-}" ] && has_server_bins "$VOTR_PG_BIN"; then
		echo "$VOTR_PG_BIN"; return 0
	fi
	if d=$(command -v initdb 2>/dev/null); then
		d=$(dirname "$(readlink -f "$d")")
		if has_server_bins "$d"; then echo "$d"; return 0; fi
	fi
	if command -v pg_config >/dev/null 2>&1; then
		d=$(pg_config --bindir 2>/dev/null || true)
		if [ -n "$d" ] && has_server_bins "$d"; then echo "$d"; return 0; fi
	fi
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -rn); do
		if has_server_bins "$d"; then echo "$d"; return 0; fi
	done
	return 1
}

install_cmd="apt-get update && apt-get install -y --no-install-recommends postgresql postgresql-contrib"

if ! find_bindir >/dev/null; then
	if [ -n "${VOTR_PG_BIN:-}" ]; then
		echo "ensure-postgres: VOTR_PG_BIN=$VOTR_PG_BIN does not hold initdb, pg_ctl and postgres; looking elsewhere" >&2
	fi
	if [ "$(id -u)" -ne 0 ]; then
		echo "ensure-postgres: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found." >&2
		echo "Install them with:  sudo sh -c '$install_cmd'" >&2
		echo "(or set VOTR_PG_BIN to the directory that holds them)" >&2
		exit 1
	fi
	echo "ensure-postgres: installing PostgreSQL server packages (about 20 s)..." >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
	if ! find_bindir >/dev/null; then
		echo "ensure-postgres: installed postgresql but still cannot find initdb/pg_ctl/postgres; set VOTR_PG_BIN" >&2
		exit 1
	fi
fi

# As root, votr runs the server as the OS user postgres (PostgreSQL refuses
# root). The package creates that user; recreate it if someone removed it.
if [ "$(id -u)" -eq 0 ] && ! id -u postgres >/dev/null 2>&1; then
	echo "ensure-postgres: creating system user postgres" >&2
	useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
