#!/usr/bin/env bash
# Image entrypoint: `entrypoint.sh ROLE [ARGS...]` runs deploy/entrypoints/ROLE.sh ARGS.
# Roles: init-certs, superlink, site, coordinator (see each script for its environment).
# The role is recorded in /tmp/fedmtkd-role for the image's default HEALTHCHECK.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
role=${1:?usage: entrypoint.sh init-certs|superlink|site|coordinator [ARGS...]}
shift
case "$role" in
  init-certs|superlink|site|coordinator) ;;
  *) echo "entrypoint: unknown role '$role'" >&2; exit 2 ;;
esac
echo "$role" > /tmp/fedmtkd-role
exec "$here/$role.sh" "$@"
