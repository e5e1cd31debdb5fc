#!/usr/bin/env bash
# SuperLink with TLS, SuperNode authentication and process isolation (the ServerApp runs in
# the coordinator role through `flower-superexec`, not here).
# Environment (all set in docker-compose.yml and by `coordinator simulate`):
#   TLS               "on": TLS + SuperNode authentication; "off": plaintext and no node auth
#                     (local tests only: `coordinator simulate --insecure`; prints a warning)
#   SUPERLINK_BIND_HOST  address to listen on (0.0.0.0 in a container, 127.0.0.1 in simulate)
#   SUPERLINK_PORT    Fleet/Control/Runtime HTTP port (8000)
#   CA_CERT           CA certificate        SERVER_CERT / SERVER_KEY   SuperLink cert and key
#   SUPEREXEC_SECRET  shared secret file of the SuperLink and the coordinator's SuperExec
#   SUPERLINK_DB      state database file (on a volume), or
#                     :flwr-in-memory: (no file; what `coordinator simulate` uses)
set -euo pipefail
: "${TLS:?}" "${SUPERLINK_BIND_HOST:?}" "${SUPERLINK_PORT:?}" "${CA_CERT:?}" "${SERVER_CERT:?}"
: "${SERVER_KEY:?}" "${SUPEREXEC_SECRET:?}" "${SUPERLINK_DB:?}"
case "$TLS" in
  on) security=(--ssl-ca-certfile "$CA_CERT" --ssl-certfile "$SERVER_CERT"
                --ssl-keyfile "$SERVER_KEY" --enable-supernode-auth) ;;
  off) echo "superlink: WARNING: TLS=off: traffic is NOT encrypted and SuperNodes are not" \
         "authenticated; use only for local tests on 127.0.0.1" >&2
       security=(--insecure) ;;
  *) echo "superlink: TLS must be 'on' or 'off', not '$TLS'" >&2; exit 2 ;;
esac
[ "$SUPERLINK_DB" = :flwr-in-memory: ] || mkdir -p "$(dirname "$SUPERLINK_DB")"
exec flower-superlink "${security[@]}" --disable-runtime-dependency-installation \
  --isolation process --superexec-auth-secret-file "$SUPEREXEC_SECRET" \
  --host "$SUPERLINK_BIND_HOST" --port "$SUPERLINK_PORT" --database "$SUPERLINK_DB"
