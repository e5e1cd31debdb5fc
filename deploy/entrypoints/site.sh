#!/usr/bin/env bash
# One hospital: (phantom data if asked) -> private teacher -> Flower SuperNode.
# Environment (all set in docker-compose.yml):
#   SITE_NAME            site name, as registered with the coordinator (site-a)
#   SITE_DATA            dataset folder (MSD/nnU-Net or CaseNN layout), e.g. /local
#   SITE_RUN             teacher run folder (best.pt, teacher.json), e.g. /local/run
#   SITE_PHANTOM         "if-missing": write a phantom set when SITE_DATA has no data; "never"
#   SITE_STYLE           phantom scanner style A|B|C      SITE_SEED   phantom seed
#   SITE_CASES           phantom cases
#   SITE_MODEL           teacher architecture             SITE_TEACHER_CONFIG  TeacherTrainConfig
#   SUPERLINK_ADDRESS    host:port of the SuperLink       SUPERNODE_PORT  local runtime port
#   CA_CERT              CA certificate                   SITE_KEY  this site's ECDSA key (PEM)
set -euo pipefail
: "${SITE_NAME:?}" "${SITE_DATA:?}" "${SITE_RUN:?}" "${SITE_PHANTOM:?}" "${SITE_MODEL:?}"
: "${SITE_TEACHER_CONFIG:?}" "${SUPERLINK_ADDRESS:?}" "${SUPERNODE_PORT:?}"
: "${CA_CERT:?}" "${SITE_KEY:?}"

has_data() {
  [ -f "$1/dataset.json" ] || compgen -G "$1/Case*.nii*" > /dev/null
}

if ! has_data "$SITE_DATA"; then
  if [ "$SITE_PHANTOM" != "if-missing" ]; then
    echo "site $SITE_NAME: no dataset in $SITE_DATA and SITE_PHANTOM is $SITE_PHANTOM" >&2
    exit 2
  fi
  : "${SITE_STYLE:?}" "${SITE_SEED:?}" "${SITE_CASES:?}"
  echo "site $SITE_NAME: writing phantom data (style $SITE_STYLE) to $SITE_DATA"
  site-node make-phantom --site-style "$SITE_STYLE" --out "$SITE_DATA" \
    --cases "$SITE_CASES" --seed "$SITE_SEED"
fi
if [ ! -f "$SITE_RUN/teacher.json" ]; then
  echo "site $SITE_NAME: training the private teacher ($SITE_MODEL) into $SITE_RUN"
  site-node train --data "$SITE_DATA" --out "$SITE_RUN" --config "$SITE_TEACHER_CONFIG" \
    --model "$SITE_MODEL" --resume
fi
q() { local v=${1//\\/\\\\}; printf '"%s"' "${v//\"/\\\"}"; }
node_config="data-path=$(q "$SITE_DATA") teacher-dir=$(q "$SITE_RUN") site-name=$(q "$SITE_NAME")"
echo "site $SITE_NAME: starting the SuperNode ($SUPERLINK_ADDRESS)"
exec flower-supernode --superlink "$SUPERLINK_ADDRESS" --root-certificates "$CA_CERT" \
  --auth-supernode-private-key "$SITE_KEY" --port "$SUPERNODE_PORT" \
  --node-config "$node_config"
