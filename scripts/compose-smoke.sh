#!/usr/bin/env bash
# compose-smoke.sh - the three-site docker-compose simulation, end to end, on a real engine:
# builds the image, brings up docker-compose.yml with the tiny override deploy/compose/smoke.yml
# (phantom data, 1-epoch teachers, one 1-epoch MT-KD student) under its own project name and
# volumes, waits for the coordinator (failing as soon as the SuperLink or a site dies), checks
# the results (results.json, export/student.onnx, run_status.json ok, no private key,
# every file readable by everyone), runs every site's audit (signatures + the coordinator's log
# as peer log) and the coordinator's, checks that each site pinned the coordinator's key, then
# tears everything down (volumes included).
# Exit status: 0 when all of that passed; 1 when a check failed; 2 on bad usage / no engine.
#
# Usage: scripts/compose-smoke.sh [--no-build] [--keep]
#   --no-build  use the existing fedmtkd:latest image
#   --keep      leave the containers and volumes (docker compose -p fedmtkd-smoke down -v later)
# Environment:
#   TORCH_INDEX_URL  optional: build torch from this PEP 503 index (then `--network host`, so a
#                    local index on 127.0.0.1 works); default: the Dockerfile's CPU wheel index
#   SMOKE_DIR        work folder (default: a fresh temporary one, kept and printed): results/
#                    (the coordinator's ./results), build.log, compose.log, audit-*.txt, stats.txt
#   SMOKE_TIMEOUT    seconds to wait for the coordinator (default 2400)
# Needs Docker Engine >= 26 and Compose >= 2.26. Takes minutes (see docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
project=fedmtkd-smoke
build=1 keep=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    *) echo "compose-smoke: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done
work=${SMOKE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fedmtkd-smoke.XXXXXX")}
mkdir -p "$work/results"
work=$(cd "$work" && pwd)
results=$work/results
export FEDMTKD_SMOKE_RESULTS=$results
compose=(docker compose -p "$project" -f docker-compose.yml -f deploy/compose/smoke.yml)
stats=$work/stats.txt
failures=0

say() { printf 'compose-smoke: %s\n' "$*"; }
fail() { printf 'compose-smoke: FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }

if ! docker compose version > /dev/null 2>&1; then
  echo "compose-smoke: no Docker engine with the compose plugin answers" >&2
  exit 2
fi

teardown() {
  if [ "$keep" = 1 ]; then say "kept: ${compose[*]} down -v"; return; fi
  "${compose[@]}" down -v -t 5 > /dev/null 2>&1 || true
}
trap teardown EXIT

build_image() {
  local -a extra=()
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    extra=(--network host --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
  fi
  say "building fedmtkd:latest"
  docker build "${extra[@]}" -f deploy/Dockerfile -t fedmtkd:latest . > "$work/build.log"
}

state() {  # state and exit code of a service's container ("missing" when there is none)
  local id
  id=$("${compose[@]}" ps -a -q "$1" 2> /dev/null | head -n 1)
  if [ -z "$id" ]; then echo missing; return; fi
  docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$id"
}

sample_memory() {  # one `docker stats` line per running container of the project
  docker stats --no-stream --format '{{.Name}} {{.MemUsage}}' \
    $("${compose[@]}" ps -q) >> "$stats" 2> /dev/null || true
}

wait_for_coordinator() {  # 0: the coordinator exited 0; 1 otherwise (a dead peer, a timeout)
  local deadline=$((SECONDS + ${SMOKE_TIMEOUT:-2400})) svc s
  while [ "$SECONDS" -lt "$deadline" ]; do
    s=$(state coordinator)
    case "$s" in
      "exited 0") return 0 ;;
      exited*) fail "coordinator exited with ${s#exited }"; return 1 ;;
    esac
    if ! kill -0 "$1" 2> /dev/null; then fail "docker compose up ended early"; return 1; fi
    for svc in superlink site-a site-b site-c; do
      s=$(state "$svc")
      case "$s" in
        exited*|dead*) fail "$svc stopped ($s) while the run was on"; return 1 ;;
      esac
    done
    sample_memory
    sleep 15
  done
  fail "no result after ${SMOKE_TIMEOUT:-2400} s"
  return 1
}

check_results() {
  local f
  for f in run_status.json results.json export/student.onnx audit/coordinator.jsonl; do
    [ -s "$results/$f" ] || fail "results: $f missing"
  done
  if ! grep -q '"ok": *true' "$results/run_status.json" 2> /dev/null; then
    fail "results: run_status.json does not say ok"
  fi
  if find "$results" -name '*.key' | grep -q . \
     || grep -rlq -- 'PRIVATE KEY-----' "$results"; then
    fail "results: a private key was exported"
  fi
  if find "$results" -type f ! -perm -0044 | grep -q .; then
    fail "results: files not readable by everyone: $(find "$results" -type f ! -perm -0044)"
  fi
}

audit() {  # every site's signed egress log against the coordinator's log, then the latter
  local site
  for site in site-a site-b site-c; do
    if "${compose[@]}" run --rm --no-deps -T -v "$results:/results:ro" --entrypoint site-node \
         "$site" audit --log /local/state/audit/egress.jsonl --pub /local/keys/audit.pub \
         --peer-log /results/audit/coordinator.jsonl > "$work/audit-$site.txt" 2>&1; then
      say "audit $site: verified"
    else
      fail "audit $site: $(tail -n 3 "$work/audit-$site.txt")"
    fi
    # the site pinned the coordinator's key (coordinator-pub volume): it never warned unpinned
    if "${compose[@]}" run --rm --no-deps -T --entrypoint test "$site" \
         -e /local/state/no_pinned_key.warned; then
      fail "$site answered without a pinned coordinator key"
    fi
  done
  if "${compose[@]}" run --rm --no-deps -T --entrypoint coordinator coordinator audit \
       --log /results/audit/coordinator.jsonl --pub /results/audit/coordinator.pub \
       > "$work/audit-coordinator.txt" 2>&1; then
    say "audit coordinator: verified"
  else
    fail "audit coordinator: $(tail -n 3 "$work/audit-coordinator.txt")"
  fi
}

start=$SECONDS
if [ "$build" = 1 ]; then build_image; fi
docker image inspect fedmtkd:latest > /dev/null || { echo "compose-smoke: no image" >&2; exit 2; }
say "image fedmtkd:latest: $(docker image inspect -f '{{.Size}}' fedmtkd:latest) bytes"
"${compose[@]}" down -v -t 5 > /dev/null 2>&1 || true  # a fresh start: no old volumes
: > "$stats"
run_start=$SECONDS
say "up (results: $results, log: $work/up.log)"
# the README's command: ends with the coordinator, exits with its status
"${compose[@]}" up --no-build --attach coordinator --exit-code-from coordinator \
  > "$work/up.log" 2>&1 &
up_pid=$!
if ! wait_for_coordinator "$up_pid"; then
  "${compose[@]}" stop -t 10 > /dev/null 2>&1 || true  # a dead site: stop now, not at timeout
fi
up_rc=0
wait "$up_pid" || up_rc=$?
coordinator=$(state coordinator)
say "run: $((SECONDS - run_start)) s; docker compose up exited $up_rc, coordinator: $coordinator"
case "$coordinator:$up_rc" in
  "exited 0:0") ;;
  "exited 0:"*) fail "docker compose up exited $up_rc although the coordinator succeeded" ;;
  *:0) fail "docker compose up exited 0 although the coordinator did not succeed" ;;
esac
"${compose[@]}" logs --no-color > "$work/compose.log" 2>&1 || true
"${compose[@]}" stop -t 10 > /dev/null 2>&1 || true
check_results
audit
if [ -s "$stats" ]; then
  say "peak memory per container (docker stats, MiB):"
  awk '{v=$2; u=v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z]+$/, "", v);
        m = (u == "GiB") ? v * 1024 : (u == "KiB") ? v / 1024 : v;
        if (m > peak[$1]) peak[$1] = m}
       END {for (c in peak) printf "  %s %.0f\n", c, peak[c]}' "$stats" | sort
fi
say "logs: $work/compose.log; total $((SECONDS - start)) s"
if [ "$failures" -ne 0 ]; then
  say "FAILED ($failures problem(s))"
  exit 1
fi
say "passed"
