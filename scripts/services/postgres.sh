# PostgreSQL 15 for the tests of the postgres feature. Sourced by scripts/test.
#
# Starts a throwaway cluster (fresh each run) on 127.0.0.1:${SPOTBATCH_PG_PORT:-54329}
# with fsync on, and exports:
#
#   SPOTBATCH_TEST_PG_URL    postgres://postgres:…@127.0.0.1:PORT/postgres
#   SPOTBATCH_TEST_PG_CTL    a pg_ctl command line for this cluster (tests append
#                            e.g. `restart -m immediate -w`)
#   SPOTBATCH_TEST_PGDATA    the cluster's data directory
#
# Installs postgresql-15 with apt-get when its binaries are missing. initdb
# refuses to run as root, so under root the cluster runs as user `postgres`
# (created if missing). Any failure exits scripts/test non-zero.

pg_fail() {
  echo "scripts/services/postgres.sh: $*" >&2
  if [ -n "${pg_log:-}" ] && [ -f "$pg_log" ]; then
    echo "--- server log ($pg_log) ---" >&2
    tail -n 50 "$pg_log" >&2 || true
  fi
  exit 1
}

pg_bin=/usr/lib/postgresql/15/bin
if [ ! -x "$pg_bin/initdb" ]; then
  echo "scripts/services/postgres.sh: $pg_bin/initdb is missing; installing postgresql-15" >&2
  if [ "$(id -u)" -ne 0 ]; then
    pg_fail "PostgreSQL 15 is not installed and this user cannot apt-get install it (run: apt-get install -y postgresql-15)"
  fi
  # The package's own cluster is not used; do not let it start one.
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || pg_fail "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >&2 ||
    pg_fail "apt-get install postgresql-15 failed"
  [ -x "$pg_bin/initdb" ] || pg_fail "postgresql-15 installed but $pg_bin/initdb is still missing"
fi

# Run the server as `postgres` when we are root (initdb refuses root).
if [ "$(id -u)" -eq 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin postgres ||
      pg_fail "could not create user postgres"
  fi
  pg_as=(runuser -u postgres --)
else
  pg_as=()
fi

pg_port="${SPOTBATCH_PG_PORT:-54329}"
pg_password=spotbatch-test
pg_dir="$SPOTBATCH_SERVICES_DIR/postgres"
pg_data="$pg_dir/data"
pg_log="$pg_dir/server.log"
pg_ctl_cmd=("${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_log")

# A cluster left running by an interrupted earlier run: stop it first.
if [ -f "$pg_data/postmaster.pid" ]; then
  "${pg_ctl_cmd[@]}" -m immediate -w stop >/dev/null 2>&1 || true
fi
rm -rf "$pg_dir"
mkdir -p "$pg_dir"
chmod 0755 "$SPOTBATCH_SERVICES_DIR"
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$pg_dir"
fi
"${pg_as[@]}" test -w "$pg_dir" ||
  pg_fail "user postgres cannot write $pg_dir (a parent directory is not searchable?); set SPOTBATCH_SERVICES_DIR elsewhere, e.g. under /tmp"

printf '%s\n' "$pg_password" >"$pg_dir/pwfile"
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$pg_dir/pwfile"; fi
"${pg_as[@]}" "$pg_bin/initdb" -D "$pg_data" --username=postgres --pwfile="$pg_dir/pwfile" \
  --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 --locale=C.UTF-8 --no-sync \
  >"$pg_dir/initdb.log" 2>&1 || {
  cat "$pg_dir/initdb.log" >&2
  pg_fail "initdb failed"
}
rm -f "$pg_dir/pwfile"

# Listen on loopback only, on our port, with the socket inside our directory.
# fsync stays on: the tests check durability across immediate restarts.
cat >>"$pg_data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pg_data'
fsync = on
max_connections = 200
log_min_messages = warning
EOF

"${pg_ctl_cmd[@]}" -w -t 60 start >/dev/null || pg_fail "pg_ctl start failed (port $pg_port in use?)"
on_exit "${pg_ctl_cmd[*]} -m fast -w stop >/dev/null 2>&1; rm -rf '$pg_dir'"

for _ in $(seq 1 60); do
  "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break
  sleep 0.5
done
"$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" || pg_fail "server on 127.0.0.1:$pg_port not ready after 30 s"

export SPOTBATCH_TEST_PG_URL="postgres://postgres:$pg_password@127.0.0.1:$pg_port/postgres"
export SPOTBATCH_TEST_PG_CTL="${pg_ctl_cmd[*]}"
export SPOTBATCH_TEST_PGDATA="$pg_data"
echo "scripts/services/postgres.sh: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port ($pg_data)" >&2
