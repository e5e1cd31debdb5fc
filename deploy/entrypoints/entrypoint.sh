#!/usr/bin/env bash
# Image entrypoint, and the launcher `coordinator simulate` runs as local processes:
# `entrypoint.sh ROLE [ARGS...]` runs deploy/entrypoints/ROLE.sh ARGS.
# Roles: init-certs, site-keys, superlink, site, coordinator (see each script for its
# environment).
# Environment:
#   RUNTIME_DIR  folder of this process's marker files (default /tmp; `coordinator simulate`
#                gives every process its own): the role is recorded in RUNTIME_DIR/fedmtkd-role
#                for healthcheck.sh (the image's default HEALTHCHECK)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
role=${1:?usage: entrypoint.sh init-certs|site-keys|superlink|site|coordinator [ARGS...]}
shift
case "$role" in
  init-certs|site-keys|superlink|site|coordinator) ;;
  *) echo "entrypoint: unknown role '$role'" >&2; exit 2 ;;
esac
runtime=${RUNTIME_DIR:-/tmp}
mkdir -p "$runtime"
echo "$role" > "$runtime/fedmtkd-role"
exec "$here/$role.sh" "$@"
