#!/usr/bin/env bash
# Container health: `healthcheck.sh [ROLE]` (ROLE defaults to the one in /tmp/fedmtkd-role).
#   superlink    something listens on 127.0.0.1:$SUPERLINK_PORT (default 8000)
#   site         the SuperNode listens on 127.0.0.1:$SUPERNODE_PORT (default 9094)
#   coordinator  coordinator.sh is alive (/tmp/fedmtkd-coordinator.alive)
#   init-certs   always healthy (one-shot)
set -euo pipefail
role=${1:-$(cat /tmp/fedmtkd-role 2>/dev/null || echo unknown)}
listening() {
  python -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 3)' "$1"
}
case "$role" in
  superlink) listening "${SUPERLINK_PORT:-8000}" ;;
  site) listening "${SUPERNODE_PORT:-9094}" ;;
  coordinator) [ -f /tmp/fedmtkd-coordinator.alive ] ;;
  init-certs) exit 0 ;;
  *) echo "healthcheck: unknown role '$role'" >&2; exit 1 ;;
esac
