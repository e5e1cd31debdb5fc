#!/usr/bin/env bash
# One-shot, the coordinator operator's: CA, SuperLink server cert and the SuperExec secret
# (layout: deploy/make_certs.py). NO site key: each site makes its own (site-keys.sh). Also
# makes PUBKEYS_DIR/<site>/, where each site drops its public keys. Idempotent.
# Environment (all set in docker-compose.yml and by `coordinator simulate`):
#   CERTS_DIR        output folder (the `certs` volume)
#   SITES            comma-separated site names, e.g. site-a,site-b,site-c
#   SUPERLINK_HOSTS  SANs of the SuperLink cert, e.g. localhost,127.0.0.1,superlink
#   PUBKEYS_DIR      folder of PUBKEYS_DIR/<site>/ (made here, owned by FEDMTKD_UID): each
#                    site's node.pub and audit.pub arrive there (compose: the `pubkeys` volume)
#   RESULTS_DIR      optional (default: none): a bind-mounted folder handed to uid FEDMTKD_UID
#   FEDMTKD_UID      owner of the generated files (default 10001, the image's user)
#   COORDINATOR_PUB_DIR optional (default: none): folder (made here, owned by FEDMTKD_UID) where
#                    the coordinator puts its audit.pub for the sites to pin
# Runs as root in compose only so that it can chown the fresh volume/bind mount; keys stay 0600.
set -euo pipefail
: "${CERTS_DIR:?set CERTS_DIR}" "${SITES:?set SITES}" "${SUPERLINK_HOSTS:?set SUPERLINK_HOSTS}"
: "${PUBKEYS_DIR:?set PUBKEYS_DIR}"
uid=${FEDMTKD_UID:-10001}
here=$(cd "$(dirname "$0")" && pwd)
python "$here/../make_certs.py" --out "$CERTS_DIR" --hosts "$SUPERLINK_HOSTS"
IFS=, read -r -a site_names <<< "$SITES"
for site in "${site_names[@]}"; do mkdir -p "$PUBKEYS_DIR/$site"; done
if [ -n "${COORDINATOR_PUB_DIR:-}" ]; then mkdir -p "$COORDINATOR_PUB_DIR"; fi
if [ "$(id -u)" = 0 ]; then
  chown -R "$uid:$uid" "$CERTS_DIR" "$PUBKEYS_DIR"
  if [ -n "${COORDINATOR_PUB_DIR:-}" ]; then chown "$uid:$uid" "$COORDINATOR_PUB_DIR"; fi
  if [ -n "${RESULTS_DIR:-}" ]; then
    mkdir -p "$RESULTS_DIR"
    chown "$uid:$uid" "$RESULTS_DIR"
  fi
fi
echo "init-certs: done"
