# Starts the servers the tests and benchmarks need, and stops them when the
# calling script exits. Sourced by scripts/test and scripts/bench (from the
# repository root, under `set -euo pipefail`).
#
# Each scripts/services/*.sh is sourced in turn: it installs (if needed) and
# starts one server on 127.0.0.1, exports the variables the tests read, and
# registers its teardown with `on_exit`. A server that cannot start fails
# the run: tests never skip for want of a server.

SPOTBATCH_SERVICES_DIR="${SPOTBATCH_SERVICES_DIR:-${TMPDIR:-/tmp}/spotbatch-services}"
mkdir -p "$SPOTBATCH_SERVICES_DIR"
export SPOTBATCH_SERVICES_DIR

teardown=()
on_exit() { teardown+=("$1"); }
run_teardown() {
  local i
  for ((i = ${#teardown[@]} - 1; i >= 0; i--)); do eval "${teardown[i]}" || true; done
}
trap run_teardown EXIT

for service in scripts/services/*.sh; do
  [ -e "$service" ] || continue
  echo "scripts/$(basename "$0"): starting $(basename "$service" .sh)" >&2
  # shellcheck source=/dev/null
  source "$service"
done
