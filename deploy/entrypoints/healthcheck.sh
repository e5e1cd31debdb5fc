#!/usr/bin/env bash
# Container health: `healthcheck.sh [ROLE]` (ROLE defaults to the one in RUNTIME_DIR/fedmtkd-role).
# `coordinator simulate` runs it too, to wait for the SuperLink and the coordinator.
#   superlink    something listens on 127.0.0.1:$SUPERLINK_PORT
#   site         the SuperNode listens on 127.0.0.1:$SUPERNODE_PORT
#   coordinator  the sites are registered and coordinator.sh is alive
#                (RUNTIME_DIR/fedmtkd-coordinator.alive)
#   init-certs, site-keys  always healthy (one-shot)
# Environment (defaults in brackets): RUNTIME_DIR [/tmp], SUPERLINK_PORT [8000],
#   SUPERNODE_PORT [9094]
set -euo pipefail
runtime=${RUNTIME_DIR:-/tmp}
role=${1:-$(cat "$runtime/fedmtkd-role" 2>/dev/null || echo unknown)}
listening() {
  python -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 3)' "$1"
}
case "$role" in
  superlink) listening "${SUPERLINK_PORT:-8000}" ;;
  site) listening "${SUPERNODE_PORT:-9094}" ;;
  coordinator) [ -f "$runtime/fedmtkd-coordinator.alive" ] ;;
  init-certs|site-keys) exit 0 ;;
  *) echo "healthcheck: unknown role '$role'" >&2; exit 1 ;;
esac
