#!/usr/bin/env bash
# The paper-style benchmark tables: per scenario, synthetic sites with one private teacher each,
# then multi-teacher distillation of the student on a public proxy set, against the no-KD,
# other-weighting and peer rows (paired statistics and a verdict at the top of results.md).
#
#   bash scripts/benchmark.sh [--scenario prostate|prostate_stress|spleen|prostate_ablations|all]
#                             [--quick] [--rows ROW[,ROW...]]
#
# Scenarios (configs/benchmark/<scenario>.toml; teachers configs/benchmark/teacher.toml):
#   prostate         realistic prostate T2 scanners P1, P2, P3 (bias, noise, resolution, slice
#                    thickness, gamma, field of view), proxy PX unlike each site (default)
#   prostate_stress  styles A, B, C (B: inverted contrast), proxy mixing A, B, C (the paper-style
#                    table's first scenario)
#   spleen           spleen CT, Decathlon-like vs Duke-like site, proxy SX unlike both
#   prostate_ablations  the default student with one setting changed per row (AT/RC/KL terms,
#                    temperature, fusion tau) on the prostate scenario's data and teachers
#   prostate_proxy_size  how many proxy cases the student needs: no-KD, the default and equal
#                    weighting on the first 3 and 6 of the 9 proxy cases (quick: 2 and 4 of 6),
#                    paired with the same rows on the full proxy (the prostate run's, when it
#                    has them) by bench/proxy_size.py -> benchmark_out/prostate/proxy_size/
#   all              prostate, prostate_stress and spleen in turn
# Full: 72 cases per site (54 test), 5 seeds, every row: several hours per scenario on 2 cores
# (prostate without the other students: 2 h 11 min in two one-thread lanes, docs/BENCHMARKS.md
# "The benchmark's time"; one lane takes about twice that).
# --quick: 12 cases per site (6 test), 4-epoch teachers, 1 seed, 4 rows, 6 epochs: a pipeline
# check (all three: about 11 min on 2 idle cores), written to benchmark_out/<scenario>_quick.
# --rows: only these rows of the config (coordinator distill --rows: student_only, single, a
# weighting label such as equal or hinton_kd, local_only, pooled, fedavg, fedprox, fedbn; the
# default row is always kept); a later run without it adds the rest and reuses finished runs.
# Results: benchmark_out/<scenario>[_quick]/distill/results.md (+ .csv, .png). Re-running skips
# finished steps (data, teachers, and each finished student row); a data folder made with other
# settings stops the run (exit 2) instead of being reused.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '6,7p' "$0" | sed 's/^# *//' >&2; exit 2; }
scenario=prostate
quick=0
rows=()
while [ $# -gt 0 ]; do
  case "$1" in
    --scenario) [ $# -ge 2 ] || usage; scenario=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --rows) [ $# -ge 2 ] || usage; rows=(--rows "$2"); shift 2 ;;
    -h|--help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "benchmark.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
case "$scenario" in
  all) scenarios=(prostate prostate_stress spleen) ;;
  prostate|prostate_stress|spleen|prostate_ablations|prostate_proxy_size)
    scenarios=("$scenario") ;;
  *) echo "benchmark.sh: unknown scenario '$scenario' (prostate, prostate_stress, spleen," \
       "prostate_ablations, prostate_proxy_size, all)" >&2
     exit 2 ;;
esac

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

# site:style:teacher architecture, per scenario; preset and proxy styles
declare -A SITES=(
  [prostate]="site_p1:P1:deeplabv3plus_r50 site_p2:P2:pspnet_r50 site_p3:P3:fcn_resnet101"
  [prostate_stress]="site_a:A:deeplabv3plus_r50 site_b:B:pspnet_r50 site_c:C:fcn_resnet101"
  [spleen]="site_decathlon:S1:deeplabv3plus_r50 site_duke:S2:pspnet_r50"
)
declare -A PRESET=([prostate]=prostate [prostate_stress]=prostate [spleen]=spleen)
declare -A PROXY=([prostate]=PX [prostate_stress]=A,B,C [spleen]=SX)
declare -A DATA=([prostate_ablations]=prostate [prostate_proxy_size]=prostate)  # a scenario run on another one's sites
if [ "$quick" = 1 ]; then
  tag=_quick cases=12 proxy_cases=6
else
  tag="" cases=72 proxy_cases=9
fi

# make_data DIR PARAMS CMD...: run CMD unless DIR holds a dataset made with the same PARAMS
make_data() {
  local dir=$1 params=$2; shift 2
  if [ -f "$dir/dataset.json" ]; then
    if [ "$(cat "$dir/.benchmark_params" 2>/dev/null)" != "$params" ]; then
      echo "benchmark.sh: $dir was made with other settings; remove it to regenerate" >&2
      exit 2
    fi
    return 0
  fi
  "$@"
  echo "$params" > "$dir/.benchmark_params"
}

run_scenario() {
  local cfg=configs/benchmark/$1$tag.toml name=${DATA[$1]:-$1}
  local out=benchmark_out/$name$tag t0=$SECONDS seed=0 site style arch entry
  echo "== [$name$tag] phantom data: $out/data"
  for entry in ${SITES[$name]}; do
    IFS=: read -r site style arch <<< "$entry"
    seed=$((seed + 100))
    make_data "$out/data/$site" "${PRESET[$name]} $style $cases $seed" \
      site-node -q make-phantom --preset "${PRESET[$name]}" --site-style "$style" \
      --out "$out/data/$site" --cases "$cases" --seed "$seed"
  done
  make_data "$out/data/proxy" "${PRESET[$name]} ${PROXY[$name]} $proxy_cases" \
    coordinator -q make-proxy --preset "${PRESET[$name]}" --style "${PROXY[$name]}" \
    --out "$out/data/proxy" --cases "$proxy_cases"
  echo "== [$name$tag] $((SECONDS - t0)) s: private teachers"
  for entry in ${SITES[$name]}; do
    IFS=: read -r site style arch <<< "$entry"
    if [ ! -f "$out/teachers/$site/teacher.json" ]; then
      echo "-- $site ($arch)"
      site-node -q train --data "$out/data/$site" --out "$out/teachers/$site" \
        --config "configs/benchmark/teacher$tag.toml" --model "$arch" --resume
    fi
  done
  echo "== [$name$tag] $((SECONDS - t0)) s: distilling the students ($cfg)"
  local page=$out/distill/results.md
  if [ "$1" = prostate_proxy_size ]; then
    proxy_size "$cfg" "$out" "$name"
    page=$out/proxy_size/proxy_size.md
  else
    coordinator distill --local --config "$cfg" "${rows[@]}"
  fi
  echo "== [$name$tag] done in $((SECONDS - t0)) s: $page"
}

# proxy_size CFG OUT NAME: CFG's rows on the first n proxy cases and on the full proxy (the
# scenario's own run when it holds those rows), then the paired table of bench/proxy_size.py
proxy_size() {
  local cfg=$1 out=$2 name=$3 n dir proxy row args=() sizes=(3 6)
  [ "$quick" = 1 ] && sizes=(2 4)
  for n in "${sizes[@]}"; do
    proxy=$out/data/proxy_$n dir=$out/proxy_size/$n
    make_data "$proxy" "${PRESET[$name]} ${PROXY[$name]} $n" \
      coordinator -q make-proxy --preset "${PRESET[$name]}" --style "${PROXY[$name]}" \
      --out "$proxy" --cases "$n"
    echo "-- first $n proxy cases: $dir"
    coordinator distill --local --config "$cfg" --proxy "$proxy" --out "$dir" "${rows[@]}"
    args+=(--size "$n=$dir")
  done
  dir=$out/distill
  for row in student_only multi_inverse_dice_loss multi_equal; do
    [ -f "$dir/runs/$row/summary.json" ] || [ -f "$dir/runs/$row/result.json" ] || \
      dir=$out/proxy_size/$proxy_cases
  done
  if [ "$dir" != "$out/distill" ]; then
    echo "-- all $proxy_cases proxy cases: $dir"
    coordinator distill --local --config "$cfg" --out "$dir" "${rows[@]}"
  fi
  python -m bench.proxy_size --full "$proxy_cases=$dir" "${args[@]}" \
    --out "$out/proxy_size/proxy_size.json"
}

for s in "${scenarios[@]}"; do
  run_scenario "$s"
done
