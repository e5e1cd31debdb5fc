"""How many proxy cases does the student need? The same rows trained on the first ``n`` cases of
the proxy set, paired with the rows of the full-proxy run on the same seeds and test cases.

``scripts/benchmark.sh --scenario prostate_proxy_size`` makes the smaller proxy sets (the first
``n`` cases of the scenario's proxy: ``make-proxy`` draws each case from its own seed, so a
smaller set is a prefix of the larger one), runs ``configs/benchmark/prostate_proxy_size.toml``
on each (``coordinator distill --proxy``) and then this script:

    python -m bench.proxy_size --full 9=benchmark_out/prostate/distill \
        --size 3=benchmark_out/prostate/proxy_size/3 --size 6=benchmark_out/prostate/proxy_size/6 \
        --out benchmark_out/prostate/proxy_size/proxy_size.json

For every row (``--rows``) and proxy size it writes the mean Dice over seeds (sd), the paired
difference against the same row on the full proxy, and the KD gain at that size (the default
row minus no-KD, paired); a markdown table goes next to the JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.compare_students import paired, seed_case_dice, summary
from common.io import atomic_write_json

ROWS = ("student_only", "multi_inverse_dice_loss", "multi_equal")


def table(runs: dict[int, Path], full: int, rows: tuple[str, ...]) -> list[dict[str, Any]]:
    """One entry per (proxy cases, row): summary, ``vs_full`` and (default row) ``kd_gain``."""
    scores = {n: {r: seed_case_dice(d / "runs" / r) for r in rows} for n, d in runs.items()}
    out = []
    for n in sorted(runs):
        for r in rows:
            entry = {"proxy_cases": n, **summary(r, scores[n][r])}
            if n != full:
                entry["vs_full"] = paired(scores[n][r], scores[full][r])
            if r == rows[1] and rows[0] == "student_only":
                entry["kd_gain"] = paired(scores[n][r], scores[n][rows[0]])
            out.append(entry)
    return out


def _cell(c: dict[str, Any] | None) -> str:
    if c is None:
        return "-"
    lo, hi = c["ci"]
    return f"{c['mean_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}], p = {c['p_wilcoxon']:.2g}"


def markdown(entries: list[dict[str, Any]], full: int) -> str:
    """The table of :func:`table` as markdown."""
    lines = [f"| proxy cases | row | seeds | mean Dice (sd) | vs the same row on {full} cases "
             "| KD gain (default - no-KD) |", "|---|---|---|---|---|---|"]
    for e in entries:
        sd = "-" if e["sd_over_seeds"] is None else f"{e['sd_over_seeds']:.3f}"
        lines.append(f"| {e['proxy_cases']} | `{e['row']}` | {e['seeds']} | "
                     f"{e['mean_dice']:.3f} ({sd}) | {_cell(e.get('vs_full'))} | "
                     f"{_cell(e.get('kd_gain'))} |")
    return "\n".join(lines) + "\n"


def _pair(text: str) -> tuple[int, Path]:
    n, _, path = text.partition("=")
    if not n.isdigit() or not path:
        raise argparse.ArgumentTypeError(f"expected CASES=FOLDER, got {text!r}")
    return int(n), Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", type=_pair, required=True, metavar="CASES=OUT",
                    help="the full-proxy run's distill folder")
    ap.add_argument("--size", type=_pair, action="append", required=True, metavar="CASES=OUT",
                    help="a smaller-proxy run's distill folder (repeatable)")
    ap.add_argument("--rows", default=",".join(ROWS),
                    help="rows to compare; the first is no-KD, the second the default")
    ap.add_argument("--out", type=Path, required=True, help="JSON file (markdown next to it)")
    args = ap.parse_args(argv)
    full, runs = args.full[0], dict([args.full, *args.size])
    entries = table(runs, full, tuple(args.rows.split(",")))
    atomic_write_json(args.out, {"full_proxy_cases": full, "rows": entries})
    md = markdown(entries, full)
    args.out.with_suffix(".md").write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
