#!/usr/bin/env bash
# The coordinator: makes the public proxy set if PROXY_DIR is empty, starts a `flower-superexec`
# attached to the SuperLink (which runs with --isolation process: the ServerApp runs here),
# starts the run with `coordinator distill` (the researchers' command: it writes the flwr and
# run config, runs `flwr run --stream` and succeeds only when the ServerApp wrote a fresh
# run_status.json that says ok), registers the sites' node-auth keys at the SuperLink meanwhile,
# then marks itself healthy (the sites may connect), waits for the run and copies the results.
# Environment (all set in docker-compose.yml and by `coordinator simulate`):
#   TLS                 "on": TLS, sites registered (node auth); "off": plaintext (tests only)
#   SUPERLINK_HOST / SUPERLINK_PORT  where the SuperLink listens (superlink / 8000)
#   CA_CERT             CA certificate         SUPEREXEC_SECRET  shared SuperExec secret file
#   SITES               comma-separated site names; expected sites and keys to register
#   SITE_PUBKEYS        the public keys the sites handed over: SITE_PUBKEYS/<site>/node.pub and
#                       audit.pub (made on each site by site-keys.sh; no private key here)
#   NODE_AUTH_KEYS_DIR  registry: <site>.pub node-auth keys, checked and copied from
#                       SITE_PUBKEYS by `make_certs.py register`, then registered at the
#                       SuperLink with `flwr supernode register` (TLS=on)
#   AUDIT_KEYS_DIR      registry: <site>.pub Ed25519 audit keys: every receipt must verify
#                       (run config site-keys-dir)
#   APP_DIR             the Flower app folder (deploy/flwr_app in the image)
#   EXPERIMENT_CONFIG   ExperimentConfig TOML (its `proxy` must be PROXY_DIR)
#   EXPERIMENT_OUT      where the ServerApp writes (run config `out`)
#   PROXY_DIR           public proxy set (written with `coordinator make-proxy` when empty)
#   PROXY_CASES         proxy cases to generate
#   RESULTS_DIR         results are copied here (bind mount ./results) by export_results.py:
#                       no private key, files 0644 / folders 0755 (the host user reads them);
#                       RESULTS_DIR = EXPERIMENT_OUT: no copy. Exit status: the run's.
#   COORDINATOR_WORKDIR flwr config (flwr_home/), run_config.toml, flwr-run.log
#   ROUND_TIMEOUT       seconds per round and for the sites to connect
#   RUN_TIMEOUT         seconds for the whole run (then `flwr stop`, exit 124)
#   WAIT_TIMEOUT        seconds to wait for the SuperLink port
#   RUN_CONFIG          optional (default: none): TOML file of run-config values overriding the
#                       above (e.g. `train = false`, `min-sites = 2`, `chunk-size = 48`)
#   RUNTIME_DIR         optional (default /tmp): folder of fedmtkd-coordinator.alive
#   COORDINATOR_THREADS optional (empty: torch's default): torch/OpenMP threads of the ServerApp,
#                       which trains the students while the sites wait
#   COORDINATOR_PUB_DIR optional (empty: not handed over): the coordinator's audit key
#                       (EXPERIMENT_OUT/audit/coordinator.key, made here if absent) signs every
#                       request; its public half is copied to COORDINATOR_PUB_DIR/audit.pub before
#                       this turns healthy, so each site pins it from its first message
set -euo pipefail
: "${TLS:?}" "${SUPERLINK_HOST:?}" "${SUPERLINK_PORT:?}" "${CA_CERT:?}" "${SUPEREXEC_SECRET:?}"
: "${SITES:?}" "${SITE_PUBKEYS:?}" "${NODE_AUTH_KEYS_DIR:?}" "${AUDIT_KEYS_DIR:?}" "${APP_DIR:?}"
: "${EXPERIMENT_CONFIG:?}" "${EXPERIMENT_OUT:?}" "${PROXY_DIR:?}" "${PROXY_CASES:?}"
: "${RESULTS_DIR:?}" "${COORDINATOR_WORKDIR:?}" "${ROUND_TIMEOUT:?}" "${RUN_TIMEOUT:?}"
: "${WAIT_TIMEOUT:?}"
if [ -n "${COORDINATOR_THREADS:-}" ]; then
  export OMP_NUM_THREADS="$COORDINATOR_THREADS" MKL_NUM_THREADS="$COORDINATOR_THREADS"
fi
alive="${RUNTIME_DIR:-/tmp}/fedmtkd-coordinator.alive"
here=$(cd "$(dirname "$0")" && pwd)
federation=fedmtkd-deployment  # coordinator.federated_cli.FEDERATION
export FLWR_HOME="$COORDINATOR_WORKDIR/flwr_home"  # of superexec and the ServerApp
case "$TLS" in
  on) tls=(--certs "$CA_CERT"); superexec_tls=(--root-certificates "$CA_CERT") ;;
  off) tls=(--insecure); superexec_tls=(--insecure) ;;
  *) echo "coordinator: TLS must be 'on' or 'off', not '$TLS'" >&2; exit 2 ;;
esac
IFS=, read -r -a site_names <<< "$SITES"
distill=(coordinator distill --config "$EXPERIMENT_CONFIG" --out "$EXPERIMENT_OUT"
         --app "$APP_DIR" --superlink "$SUPERLINK_HOST:$SUPERLINK_PORT" "${tls[@]}"
         --site-keys "$AUDIT_KEYS_DIR" --expected-sites "${#site_names[@]}"
         --round-timeout "$ROUND_TIMEOUT" --timeout "$RUN_TIMEOUT"
         --workdir "$COORDINATOR_WORKDIR")
if [ -n "${RUN_CONFIG:-}" ]; then distill+=(--run-config "$RUN_CONFIG"); fi

wait_superlink() {
  python - "$SUPERLINK_HOST" "$SUPERLINK_PORT" "$WAIT_TIMEOUT" <<'PY'
import socket, sys, time
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + limit
while True:
    try:
        socket.create_connection((host, port), 3).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"coordinator: no SuperLink at {host}:{port} after {limit:.0f} s")
        time.sleep(1)
PY
}

write_flwr_config() {  # the very writer of `coordinator distill` (tomli-w, one federation)
  python - "$FLWR_HOME" "$SUPERLINK_HOST:$SUPERLINK_PORT" "$TLS" "$CA_CERT" <<'PY'
import sys
from pathlib import Path

from coordinator.federated_cli import write_connection

home, address, tls, ca = sys.argv[1:5]
write_connection(Path(home), address,
                 {"root-certificates": ca} if tls == "on" else {"insecure": True})
PY
}

register_site() {
  flwr supernode register "$NODE_AUTH_KEYS_DIR/$1.pub" "$federation" --name "$1" \
    || echo "coordinator: could not register $1 (already registered?)" >&2
}

register_sites() {  # in parallel: each `flwr` start costs seconds
  local site pid
  local -a pids=()
  for site in "${site_names[@]}"; do
    register_site "$site" &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}

copy_results() {  # no private key (audit/coordinator.key stays), readable by the host user
  python "$here/../export_results.py" "$EXPERIMENT_OUT" "$RESULTS_DIR"
}

hand_over_key() {  # before the sites start: they pin this key (SITE_COORDINATOR_KEY)
  python - "$EXPERIMENT_OUT/audit/coordinator.key" <<'PY'
import sys
from pathlib import Path

from common.records import load_or_create_key

load_or_create_key(Path(sys.argv[1]))
PY
  if [ -n "${COORDINATOR_PUB_DIR:-}" ]; then
    install -m 0644 "$EXPERIMENT_OUT/audit/coordinator.pub" "$COORDINATOR_PUB_DIR/audit.pub"
  fi
}

cleanup() {
  local pid
  for pid in "${superexec:-}" "${run:-}"; do
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  done
  rm -f "$alive"
}

trap cleanup EXIT
# the sites' public keys: checked (kind, no private key, no silent key swap) and registered
python "$here/../make_certs.py" register --pubs "$SITE_PUBKEYS" --sites "$SITES" \
  --node-dir "$NODE_AUTH_KEYS_DIR" --audit-dir "$AUDIT_KEYS_DIR"
hand_over_key
wait_superlink
if [ -z "$(ls -A "$PROXY_DIR" 2>/dev/null)" ]; then
  coordinator make-proxy --out "$PROXY_DIR" --cases "$PROXY_CASES"
fi
flower-superexec --runtime-api-address "$SUPERLINK_HOST:$SUPERLINK_PORT" \
  "${superexec_tls[@]}" --superexec-auth-secret-file "$SUPEREXEC_SECRET" \
  --executor subprocess --parent-pid $$ &
superexec=$!
# The run starts now (the ServerApp waits up to ROUND_TIMEOUT for the sites), so that its
# start-up overlaps the registration; niced, so that its heavy imports do not slow down the
# registration the sites wait for. It writes COORDINATOR_WORKDIR/flwr_home itself.
nice -n 10 "${distill[@]}" &
run=$!
if [ "$TLS" = on ]; then
  FLWR_HOME="$COORDINATOR_WORKDIR/register" write_flwr_config
  FLWR_HOME="$COORDINATOR_WORKDIR/register" register_sites
fi
mkdir -p "$(dirname "$alive")"
touch "$alive"  # healthy: the sites may connect
status=0
wait "$run" || status=$?
run=
if [ ! "$RESULTS_DIR" -ef "$EXPERIMENT_OUT" ] && [ -d "$EXPERIMENT_OUT" ]; then
  copy_results  # also after a failed run: what it wrote helps to find out why
fi
if [ "$status" -ne 0 ]; then
  echo "coordinator: the run FAILED (exit $status); what it wrote is in $RESULTS_DIR" >&2
  exit "$status"
fi
echo "coordinator: results in $RESULTS_DIR"
