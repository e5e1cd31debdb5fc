#!/usr/bin/env bash
# One-shot, on the site: make this site's node-auth and audit key pairs in its own keys folder
# (`site-node keys init`; existing keys are kept) and drop ONLY the public halves where the
# coordinator's operator picks them up (in compose: this site's folder of the `pubkeys`
# volume; in a real deployment: e-mail or USB to the operator, who runs
# `make_certs.py register`). The private keys never leave SITE_KEYS.
# Environment (all set in docker-compose.yml and by `coordinator simulate`):
#   SITE_NAME    site name, as the coordinator registers it (site-a)
#   SITE_KEYS    this site's keys folder (node.key, node.pub, audit.key, audit.pub), e.g.
#                /local/keys: the site role reads node.key and audit.key from here
#   PUBKEYS_OUT  where node.pub and audit.pub are copied (the coordinator's SITE_PUBKEYS/<site>)
set -euo pipefail
: "${SITE_NAME:?}" "${SITE_KEYS:?}" "${PUBKEYS_OUT:?}"
site-node keys init --dir "$SITE_KEYS" --name "$SITE_NAME"
mkdir -p "$PUBKEYS_OUT"
cp "$SITE_KEYS/node.pub" "$SITE_KEYS/audit.pub" "$PUBKEYS_OUT/"
echo "site-keys $SITE_NAME: public keys in $PUBKEYS_OUT"
