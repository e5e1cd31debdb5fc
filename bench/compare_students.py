"""Paired Dice of student rows trained in separate experiment folders on the same sites.

Each ``--run NAME=OUT/runs/ROW`` names one student row folder holding ``seed<s>/result.json``
(``coordinator distill`` with ``repeats``); every row is compared with the first, paired on
seed and test case, with the repo's own statistics (:func:`common.stats.compare_paired`). Used
when the rows could not share one config (e.g. runs made before per-row ``student`` overrides).

    python -m bench.compare_students --run enet=/tmp/pq/enet/runs/multi_inverse_dice_loss \
        --run lraspp=/tmp/pq/lraspp/runs/multi_inverse_dice_loss --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write_json
from common.stats import align_scores, compare_paired


def seed_case_dice(row: Path) -> dict[str, dict[str, float]]:
    """``{"seed<s>": {site/case: dice}}`` of one student row folder (``seed<s>/result.json``
    per seed, or the one ``result.json`` of a single-seed row)."""
    out: dict[str, dict[str, float]] = {}
    per_seed = sorted(row.glob("seed*/result.json"))
    for res in per_seed or sorted(row.glob("result.json")):
        r = json.loads(res.read_text())
        key = res.parent.name if per_seed else f"seed{r.get('seed', 0)}"
        out[key] = {f"{site}/{case}": float(s["dice"]) for site, cases in r["cases"].items()
                    for case, s in cases.items() if s.get("dice") is not None}
    if not out:
        raise SystemExit(f"{row}: no seed*/result.json or result.json")
    return out


def summary(name: str, scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Mean Dice over cases per seed, then their mean and sample sd."""
    per_seed = [float(np.mean(list(v.values()))) for v in scores.values()]
    return {"row": name, "seeds": len(per_seed), "mean_dice": float(np.mean(per_seed)),
            "sd_over_seeds": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None}


def paired(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``a`` minus ``b``, paired on seed and case: mean, 95 % CI, Wilcoxon p, significant."""
    x, y, seeds, cases = align_scores(a, b)
    c = compare_paired(x, y)
    return {"mean_diff": c.mean_diff, "ci": [c.ci_low, c.ci_high], "p_wilcoxon": c.p_value,
            "significant": c.significant(), "seeds": len(seeds), "cases": len(cases)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="NAME=ROW_FOLDER")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = [(n, Path(p)) for n, p in (r.split("=", 1) for r in args.run)]
    scores = {n: seed_case_dice(p) for n, p in rows}
    ref = rows[0][0]
    table = []
    for name, _ in rows:
        entry = summary(name, scores[name])
        if name != ref:
            entry["vs_" + ref] = paired(scores[name], scores[ref])
        table.append(entry)
        print(json.dumps(entry))
    atomic_write_json(args.out, {"reference": ref, "rows": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
