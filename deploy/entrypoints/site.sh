#!/usr/bin/env bash
# One hospital: (phantom data if asked) -> (private teacher if asked) -> `site-node run`, which
# validates the data, records the start in SITE_STATE/runs.jsonl and execs flower-supernode
# (the very command hospital IT runs; `coordinator simulate` starts its sites through here too).
# `site.sh [ARGS...]`: ARGS are appended to `site-node run` (e.g. --dry-run, --policy FILE).
# Environment (all set in docker-compose.yml and by `coordinator simulate`):
#   TLS                  "on": TLS + node auth (CA_CERT, SITE_KEY); "off": plaintext (tests only)
#   SITE_NAME            site name, as registered with the coordinator (site-a)
#   SITE_DATA            dataset folder (MSD/nnU-Net or CaseNN layout), e.g. /local/data; only
#                        read (phantoms are written there once): never above SITE_RUN/SITE_STATE
#   SITE_RUN             teacher run folder (best.pt, teacher.json), e.g. /local/run
#   SITE_STATE           run history and signed egress log (runs.jsonl, audit/), e.g. /local/state
#   SITE_PHANTOM         "if-missing": write a phantom set when SITE_DATA has no data; "never"
#     SITE_STYLE         phantom style: A, P1, S1..  SITE_SEED  phantom seed  SITE_CASES  cases
#   SITE_TRAIN_ON_START  "if-missing": train the teacher before starting when SITE_RUN has no
#                        teacher.json; "never": the coordinator's `train` message trains it
#     SITE_MODEL         teacher architecture         SITE_TEACHER_CONFIG  TeacherTrainConfig
#   SITE_COMPRESSION     query logits encoding: fp16 | int8_probs | downsample | fp32
#   SITE_WEIGHT_RELEASE  "off": the egress policy refuses FedAvg (query.fedavg_train, weights
#                        leave); "on": FedAvg baseline runs only (site-node run
#                        --allow-weight-release; every release is in the audit log)
#   SITE_AUDIT_KEY       Ed25519 key signing the egress log (site-keys.sh: SITE_KEYS/audit.key,
#                        made on this site; only audit.pub went to the coordinator)
#   SUPERLINK_ADDRESS    host:port of the SuperLink (or of a proxy in front of it)
#   SUPERNODE_BIND_HOST  address of the local ClientApp runtime API (127.0.0.1)
#   SUPERNODE_PORT       its port (one per site when sites share a machine)
#   CA_CERT              CA certificate
#   SITE_KEY             node-auth key (OpenSSH ECDSA P-384, site-keys.sh: SITE_KEYS/node.key)
# Optional:
#   SITE_POLL_INTERVAL   seconds between the SuperNode's polls when idle (empty: Flower's 3 s)
#   SITE_COORDINATOR_KEY the coordinator's audit public key, pinned (empty: not pinned, any
#                        signer accepted, with a warning)
set -euo pipefail
: "${TLS:?}" "${SITE_NAME:?}" "${SITE_DATA:?}" "${SITE_RUN:?}" "${SITE_STATE:?}"
: "${SITE_PHANTOM:?}" "${SITE_TRAIN_ON_START:?}" "${SITE_COMPRESSION:?}" "${SITE_AUDIT_KEY:?}"
: "${SITE_WEIGHT_RELEASE:?}"
: "${SUPERLINK_ADDRESS:?}" "${SUPERNODE_BIND_HOST:?}" "${SUPERNODE_PORT:?}"
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
if [ "$SITE_TRAIN_ON_START" = if-missing ] && [ ! -f "$SITE_RUN/teacher.json" ]; then
  : "${SITE_MODEL:?}" "${SITE_TEACHER_CONFIG:?}"
  echo "site $SITE_NAME: training the private teacher ($SITE_MODEL) into $SITE_RUN"
  site-node train --data "$SITE_DATA" --out "$SITE_RUN" --config "$SITE_TEACHER_CONFIG" \
    --model "$SITE_MODEL" --resume
fi
case "$TLS" in
  on) security=(--certs "$CA_CERT" --key "$SITE_KEY") ;;
  off) security=(--insecure) ;;
  *) echo "site $SITE_NAME: TLS must be 'on' or 'off', not '$TLS'" >&2; exit 2 ;;
esac
case "$SITE_WEIGHT_RELEASE" in
  on) release=(--allow-weight-release) ;;
  off) release=() ;;
  *) echo "site $SITE_NAME: SITE_WEIGHT_RELEASE must be 'on' or 'off'" >&2; exit 2 ;;
esac
extra=()
[ -n "${SITE_POLL_INTERVAL:-}" ] && extra+=(--poll-interval "$SITE_POLL_INTERVAL")
[ -n "${SITE_COORDINATOR_KEY:-}" ] && extra+=(--coordinator-key "$SITE_COORDINATOR_KEY")
echo "site $SITE_NAME: starting the SuperNode ($SUPERLINK_ADDRESS)"
exec site-node run --name "$SITE_NAME" --data "$SITE_DATA" --teacher-dir "$SITE_RUN" \
  --state-dir "$SITE_STATE" --coordinator "$SUPERLINK_ADDRESS" "${security[@]}" "${release[@]}" \
  --audit-key "$SITE_AUDIT_KEY" --compression "$SITE_COMPRESSION" \
  --host "$SUPERNODE_BIND_HOST" --port "$SUPERNODE_PORT" "${extra[@]}" "$@"
