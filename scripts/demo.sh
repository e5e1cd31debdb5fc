#!/usr/bin/env bash
# The demo: a real three-site federation on this machine (about 10 minutes on 2 CPU cores).
#  1. three synthetic hospitals (prostate MRI phantoms, scanner styles A, B, C) and a public
#     proxy set;
#  2. each site trains its private teacher on its own folder (site-node train);
#  3. `coordinator simulate`: a SuperLink with TLS and node authentication, one SuperNode per
#     site (keys made at each site, only public halves registered), the coordinator distilling
#     the default multi-teacher student and the no-KD student, both scored AT THE SITES on their
#     held-out cases; report, plots and exported student in demo_out/distill/;
#  4. every site's signed egress log verified (site-node audit), against the coordinator's log;
#  5. the exported student segments one scan (coordinator predict).
# Re-running skips finished steps. The paper-style table: bash scripts/benchmark.sh (~1.5 h).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=demo_out
FED=$OUT/federation
declare -A STYLE=([site_a]=A [site_b]=B [site_c]=C)
declare -A ARCH=([site_a]=deeplabv3plus_r50 [site_b]=pspnet_r50 [site_c]=fcn_resnet101)
t0=$SECONDS
step() { echo; echo "== [$((SECONDS - t0)) s] $*"; }

step "1/5 phantom data: three sites and the public proxy set"
seed=0
for site in site_a site_b site_c; do
  seed=$((seed + 100))
  [ -f "$OUT/data/$site/dataset.json" ] || \
    site-node make-phantom --site-style "${STYLE[$site]}" --out "$OUT/data/$site" --cases 10 --seed $seed
done
[ -f "$OUT/data/proxy/dataset.json" ] || coordinator make-proxy --out "$OUT/data/proxy" --cases 6

step "2/5 each site trains its private teacher (data and weights stay in its folder)"
for site in site_a site_b site_c; do
  if [ ! -f "$OUT/teachers/$site/teacher.json" ]; then
    echo "-- $site: ${ARCH[$site]}"
    site-node -q train --data "$OUT/data/$site" --out "$OUT/teachers/$site" \
      --config configs/demo_teacher.toml --model "${ARCH[$site]}" --resume
  fi
done

step "3/5 the federation: SuperLink (TLS, node auth), 3 SuperNodes, coordinator"
coordinator simulate --sites 3 --config configs/demo_prostate.toml --workdir "$FED"


step "4/5 auditors: every site's signed log, checked against the coordinator's"
for site in site_a site_b site_c; do
  echo "-- $site"
  site-node audit --log "$FED/sites/$site/audit/egress.jsonl" \
    --pub "$FED/sites/$site/keys/audit.pub" \
    --peer-log "$OUT/distill/audit/coordinator.jsonl" \
    --html "$OUT/audit_$site.html" | tail -n 12
done

step "5/5 the exported student segments one scan of site_a"
mkdir -p "$OUT/predict_in"
scan=$(ls "$OUT/data/site_a/imagesTr/" | head -n 1)
cp "$OUT/data/site_a/imagesTr/$scan" "$OUT/predict_in/"
coordinator predict --model "$OUT/distill/export" --in "$OUT/predict_in" \
  --out "$OUT/predict" --overlays

echo
echo "Done in $((SECONDS - t0)) s. Open $OUT/distill/results.md and results.png; audits in"
echo "$OUT/audit_site_*.html; the segmented scan in $OUT/predict/."
