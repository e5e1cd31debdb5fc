#!/usr/bin/env bash
# The coordinator: runs the ServerApp (through a local `flower-superexec` attached to the
# SuperLink, which runs with --isolation process), registers the sites' public keys, makes the
# public proxy set if missing, drives `flwr run` and copies the results out.
# Environment (all set in docker-compose.yml):
#   SUPERLINK_HOST / SUPERLINK_PORT  where the SuperLink listens (superlink / 8000)
#   CA_CERT           CA certificate           SUPEREXEC_SECRET  shared SuperExec secret file
#   SITES             comma-separated site names; SITE_KEYS_DIR/<site>/<site>.pub are registered
#   SITE_KEYS_DIR     folder of the sites' public keys
#   APP_DIR           the Flower app folder (deploy/flwr_app in the image)
#   EXPERIMENT_CONFIG ExperimentConfig TOML (its `proxy` must be PROXY_DIR)
#   PROXY_DIR         public proxy set (written with `coordinator make-proxy` when missing)
#   PROXY_CASES       proxy cases to generate
#   EXPERIMENT_OUT    where the ServerApp writes (run-config `out`)
#   RESULTS_DIR       results are copied here (bind mount ./results)
#   FLWR_HOME         Flower CLI home (config.toml is written here)
#   ROUND_TIMEOUT     seconds per round and for the sites to connect
#   WAIT_TIMEOUT      seconds to wait for the SuperLink port
set -euo pipefail
: "${SUPERLINK_HOST:?}" "${SUPERLINK_PORT:?}" "${CA_CERT:?}" "${SUPEREXEC_SECRET:?}"
: "${SITES:?}" "${SITE_KEYS_DIR:?}" "${APP_DIR:?}" "${EXPERIMENT_CONFIG:?}" "${PROXY_DIR:?}"
: "${PROXY_CASES:?}" "${EXPERIMENT_OUT:?}" "${RESULTS_DIR:?}" "${FLWR_HOME:?}"
: "${ROUND_TIMEOUT:?}" "${WAIT_TIMEOUT:?}"
federation=fedmtkd
touch /tmp/fedmtkd-coordinator.alive

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
        time.sleep(2)
PY
}

write_flwr_config() {
  mkdir -p "$FLWR_HOME"
  printf '[superlink.%s]\naddress = "%s:%s"\nroot-certificates = "%s"\n' \
    "$federation" "$SUPERLINK_HOST" "$SUPERLINK_PORT" "$CA_CERT" > "$FLWR_HOME/config.toml"
}

register_sites() {
  local site
  local -a names
  IFS=, read -r -a names <<< "$SITES"
  for site in "${names[@]}"; do
    flwr supernode register "$SITE_KEYS_DIR/$site/$site.pub" "$federation" --name "$site" \
      || echo "coordinator: could not register $site (already registered?)"
  done
}

copy_results() {
  mkdir -p "$RESULTS_DIR"
  local item
  for item in "$EXPERIMENT_OUT"/*; do
    [ "$(basename "$item")" = teacher_cache ] || cp -r "$item" "$RESULTS_DIR/"
  done
}

wait_superlink
write_flwr_config
[ -f "$PROXY_DIR/dataset.json" ] || coordinator make-proxy --out "$PROXY_DIR" --cases "$PROXY_CASES"
register_sites
flower-superexec --runtime-api-address "$SUPERLINK_HOST:$SUPERLINK_PORT" \
  --root-certificates "$CA_CERT" --superexec-auth-secret-file "$SUPEREXEC_SECRET" \
  --executor subprocess &
superexec=$!
trap 'kill "$superexec" 2>/dev/null || true; rm -f /tmp/fedmtkd-coordinator.alive' EXIT
n_sites=$(tr ',' '\n' <<< "$SITES" | grep -c .)
rm -f "$EXPERIMENT_OUT/federated_results.json"
flwr run "$APP_DIR" "$federation" --stream --run-config \
  "config-path=\"$EXPERIMENT_CONFIG\" out=\"$EXPERIMENT_OUT\" expected-sites=$n_sites timeout=$ROUND_TIMEOUT"
if [ ! -f "$EXPERIMENT_OUT/federated_results.json" ]; then
  echo "coordinator: the run wrote no $EXPERIMENT_OUT/federated_results.json" >&2
  exit 1
fi
copy_results
echo "coordinator: results in $RESULTS_DIR"
