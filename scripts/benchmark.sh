#!/usr/bin/env bash
# The paper-style benchmark table (about 1.5 h on 2 cores): three synthetic prostate sites (scanner styles A, B, C), one private teacher per
# site, then multi-teacher distillation of an ENet student on a public proxy set.
# Results: benchmark_out/distill/results.md (+ .csv, .png, overlays). Re-running skips finished steps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=benchmark_out
declare -A STYLE=([site_a]=A [site_b]=B [site_c]=C)
declare -A ARCH=([site_a]=deeplabv3plus_r50 [site_b]=pspnet_r50 [site_c]=fcn_resnet101)
seed=0
for site in site_a site_b site_c; do
  seed=$((seed + 100))
  [ -f "$OUT/data/$site/dataset.json" ] || \
    site-node make-phantom --site-style "${STYLE[$site]}" --out "$OUT/data/$site" --cases 16 --seed $seed
done
[ -f "$OUT/data/proxy/dataset.json" ] || coordinator make-proxy --out "$OUT/data/proxy" --cases 9
for site in site_a site_b site_c; do
  if [ ! -f "$OUT/teachers/$site/teacher.json" ]; then
    echo "== training the private teacher of $site (${ARCH[$site]})"
    site-node train --data "$OUT/data/$site" --out "$OUT/teachers/$site" \
      --config configs/benchmark_teacher.toml --model "${ARCH[$site]}" --resume
  fi
done
echo "== distilling the student"
coordinator distill --local --config configs/benchmark_prostate.toml
echo "Done. Open $OUT/distill/results.md and $OUT/distill/results.png"
