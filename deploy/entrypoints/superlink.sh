#!/usr/bin/env bash
# SuperLink with TLS, SuperNode authentication and process isolation (the ServerApp runs in
# the coordinator container through `flower-superexec`, not here).
# Environment (all set in docker-compose.yml):
#   SUPERLINK_PORT    Fleet/Control/Runtime HTTP port (8000)
#   CA_CERT           CA certificate        SERVER_CERT / SERVER_KEY   SuperLink cert and key
#   SUPEREXEC_SECRET  shared secret file of the SuperLink and the coordinator's SuperExec
#   SUPERLINK_DB      state database file (on the `superlink-state` volume)
set -euo pipefail
: "${SUPERLINK_PORT:?}" "${CA_CERT:?}" "${SERVER_CERT:?}" "${SERVER_KEY:?}"
: "${SUPEREXEC_SECRET:?}" "${SUPERLINK_DB:?}"
mkdir -p "$(dirname "$SUPERLINK_DB")"
exec flower-superlink \
  --ssl-ca-certfile "$CA_CERT" --ssl-certfile "$SERVER_CERT" --ssl-keyfile "$SERVER_KEY" \
  --enable-supernode-auth --disable-runtime-dependency-installation \
  --isolation process --superexec-auth-secret-file "$SUPEREXEC_SECRET" \
  --host 0.0.0.0 --port "$SUPERLINK_PORT" --database "$SUPERLINK_DB"
