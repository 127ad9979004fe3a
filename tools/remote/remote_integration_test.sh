#!/usr/bin/env bash
# End-to-end test of remote execution on a local BuildGrid (see tools/remote/README.md).
#
#   tools/remote/remote_integration_test.sh                     # directly, or
#   tools/bazel test //tools/remote:remote_integration_test      # as a (manual) test
#
# It uses its own stack (state directory, free port), a copy of the workspace and its own
# Bazel output base, so it touches neither a stack you run nor the workspace or its caches:
#  1. tools/remote/start with 2 cpu workers;
#  2. runs the 2-shard //tools/remote:remote_probe_test_cpu with --noremote_accept_cached
#     and checks, in Bazel's execution log, that both shards ran remotely and passed, and
#     in the worker logs that the workers ran them;
#  3. cleans the output base, runs it again and checks both shards were remote cache hits
#     and no worker ran anything;
#  4. checks that the cuda variant, which no cpu worker can take, fails fast with the
#     server's "Could not find property set" instead of queueing;
#  5. tools/remote/stop, and checks that no process of the stack is left.
# Any step that does not happen fails the test; it cannot pass without running.
set -euo pipefail

ME="remote_integration_test"
SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SCRIPT")/../.." && pwd)"
[[ -x "$ROOT/tools/bazel" && -f "$ROOT/WORKSPACE" ]] || {
  echo "$ME: FAIL: cannot find the workspace from $SCRIPT" >&2
  exit 1
}

# Under Bazel, HOME may be unset or point into the sandbox: use the real one so the cached
# Python and BuildGrid environments are found instead of rebuilt.
HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
export HOME
export PATH="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin:${PATH:-}"

step() { echo "=== $ME: $*" >&2; }
fail() {
  echo "$ME: FAIL: $*" >&2
  exit 1
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fsdp-remote-it.XXXXXX")"
# Bazel runs in a copy of the workspace: `bazel clean` and a second output base would
# otherwise remove or repoint the workspace's bazel-* links under other builds' feet.
mkdir "$WORK/src"
tar -C "$ROOT" --exclude=./.git --exclude='./bazel-*' -cf - . | tar -C "$WORK/src" -xf -
cd "$WORK/src"
export FSDP_REMOTE_STATE_DIR="$WORK/state"
OB="$WORK/ob"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BAZEL=(tools/bazel "--output_base=$OB")
FLAGS=(--config=remote "--remote_executor=grpc://127.0.0.1:$PORT" --symlink_prefix=/
  --test_output=errors --color=no --curses=no)
TARGET=//tools/remote:remote_probe_test_cpu

cleanup() {
  local rc=$?
  tools/remote/stop --purge >/dev/null 2>&1 || true
  "${BAZEL[@]}" shutdown >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# Prints "<remote shards> <cache hits> <TestRunner spawns>" from an execution log.
count_runs() {
  python3 - "$1" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
dec, i, spawns = json.JSONDecoder(), 0, []
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    obj, i = dec.raw_decode(text, i)
    spawns.append(obj)
tests = [s for s in spawns if s.get("mnemonic") == "TestRunner"]
remote = [s for s in tests if s.get("runner") == "remote" and not s.get("remoteCacheHit")]
hits = [s for s in tests if s.get("remoteCacheHit")]
print(len(remote), len(hits), len(tests))
EOF
}

worker_runs() { cat "$FSDP_REMOTE_STATE_DIR"/logs/worker-*.log 2>/dev/null | grep -c ": running " || true; }

step "1. start the stack on 127.0.0.1:$PORT"
tools/remote/start --port "$PORT" --workers 2
mapfile -t PIDS < <(python3 -c 'import json, sys; [print(p["pid"]) for p in json.load(open(sys.argv[1]))["processes"]]' \
  "$FSDP_REMOTE_STATE_DIR/state.json")
[[ ${#PIDS[@]} -eq 4 ]] || fail "expected 4 processes (postgres, server, 2 workers), got ${#PIDS[@]}"

step "2. $TARGET on the workers (--noremote_accept_cached)"
"${BAZEL[@]}" test "$TARGET" "${FLAGS[@]}" --noremote_accept_cached \
  --execution_log_json_file="$WORK/run1.json" 2>&1 | tee "$WORK/run1.log" ||
  fail "remote run failed (see above)"
read -r remote hits tests < <(count_runs "$WORK/run1.json")
[[ "$tests" -eq 2 && "$remote" -eq 2 ]] ||
  fail "run 1: expected 2 test shards executed remotely, got $remote remote of $tests"
grep -qE "^$TARGET +PASSED" "$WORK/run1.log" || fail "run 1: $TARGET did not pass"
ran="$(worker_runs)"
[[ "$ran" -ge 2 ]] || fail "run 1: the worker logs show $ran actions, expected at least 2"
TESTLOGS="$("${BAZEL[@]}" info "${FLAGS[@]}" bazel-testlogs 2>/dev/null)"
for shard in 1 2; do
  dir="$TESTLOGS/tools/remote/remote_probe_test_cpu/shard_${shard}_of_2"
  [[ -s "$dir/test.xml" && -s "$dir/test.log" ]] || fail "run 1: no test.xml/test.log from the worker in $dir"
done
echo "$ME: run 1: 2 of 2 shards executed remotely; workers ran $ran action(s)" >&2

step "3. again from a clean output base: remote cache hits"
"${BAZEL[@]}" clean >/dev/null 2>&1
"${BAZEL[@]}" test "$TARGET" "${FLAGS[@]}" \
  --execution_log_json_file="$WORK/run2.json" 2>&1 | tee "$WORK/run2.log" ||
  fail "cached run failed (see above)"
read -r remote hits tests < <(count_runs "$WORK/run2.json")
[[ "$tests" -eq 2 && "$hits" -eq 2 ]] ||
  fail "run 2: expected 2 remote cache hits, got $hits of $tests ($remote executed)"
[[ "$(worker_runs)" -eq "$ran" ]] || fail "run 2: the workers executed actions on a cache hit"
grep -qE "^$TARGET +(\(cached\) )?PASSED" "$WORK/run2.log" || fail "run 2: $TARGET did not pass"
echo "$ME: run 2: 2 of 2 shards were remote cache hits" >&2

step "4. a cuda target with only cpu workers fails fast"
start_s=$SECONDS
if timeout 300 "${BAZEL[@]}" test //tools/remote:remote_probe_test_cuda "${FLAGS[@]}" --config=cuda \
  >"$WORK/run3.log" 2>&1; then
  fail "the cuda target passed on cpu-only workers"
fi
took=$((SECONDS - start_s))
grep -q "Could not find property set" "$WORK/run3.log" ||
  fail "the cuda target did not fail with the server's property-set error: $(tail -5 "$WORK/run3.log")"
[[ "$took" -lt 120 ]] || fail "the cuda target took $took s to fail"
echo "$ME: cuda target refused in ${took} s: $(grep -o 'FAILED_PRECONDITION.*' "$WORK/run3.log" | head -1)" >&2

step "5. stop: no process left"
tools/remote/stop
for pid in "${PIDS[@]}"; do
  if kill -0 "$pid" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]; then
    fail "process $pid is still running after stop"
  fi
done
# Workers and server name the state directory, PostgreSQL its private data directory.
KEY="$(python3 -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:10])' "$FSDP_REMOTE_STATE_DIR")"
left="$(pgrep -af "$FSDP_REMOTE_STATE_DIR|fsdp-conformance-remote-$KEY" | grep -v pgrep || true)"
[[ -z "$left" ]] || fail "processes of the stack are left: $left"
[[ ! -e "$FSDP_REMOTE_STATE_DIR/state.json" ]] || fail "stop left its state file"
echo "$ME: PASS" >&2
