#!/usr/bin/env bash
# One-shot: CA, SuperLink server cert, per-site ECDSA P-384 node-auth keys (PEM + OpenSSH),
# per-site Ed25519 audit keys (public halves in CERTS_DIR/audit/) and the SuperExec secret
# (layout: deploy/make_certs.py). Idempotent: existing keys are kept.
# Environment (all set in docker-compose.yml and by `coordinator simulate`):
#   CERTS_DIR        output folder (the `certs` volume)
#   SITES            comma-separated site names, e.g. site-a,site-b,site-c
#   SUPERLINK_HOSTS  SANs of the SuperLink cert, e.g. localhost,127.0.0.1,superlink
#   RESULTS_DIR      optional (default: none): a bind-mounted folder handed to uid FEDMTKD_UID
#   FEDMTKD_UID      owner of the generated files (default 10001, the image's user)
# Runs as root in compose only so that it can chown the fresh volume/bind mount; keys stay 0600.
set -euo pipefail
: "${CERTS_DIR:?set CERTS_DIR}" "${SITES:?set SITES}" "${SUPERLINK_HOSTS:?set SUPERLINK_HOSTS}"
uid=${FEDMTKD_UID:-10001}
here=$(cd "$(dirname "$0")" && pwd)
python "$here/../make_certs.py" --out "$CERTS_DIR" --sites "$SITES" --hosts "$SUPERLINK_HOSTS"
if [ "$(id -u)" = 0 ]; then
  chown -R "$uid:$uid" "$CERTS_DIR"
  if [ -n "${RESULTS_DIR:-}" ]; then
    mkdir -p "$RESULTS_DIR"
    chown "$uid:$uid" "$RESULTS_DIR"
  fi
fi
echo "init-certs: done"
