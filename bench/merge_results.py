"""One results page from a benchmark config run in parts.

A full scenario (every row of ``configs/benchmark/<scenario>.toml``, 5 seeds) takes hours on a
CPU. It can be run in parts, each a ``--rows`` subset in its own ``benchmark_out`` (other
machines, other days); ``--rows`` always keeps the default row, and every part trains its own
copy of the data and teachers from the same seeds. The rows are compared paired on seed and
test case, so parts may be put side by side only when they were made from the same teachers,
test cases and code. This tool checks that: every row found in more than one part (the default
row and the teacher rows at least) must carry identical per-case scores, and each part must
share at least one such row with the parts before it. Otherwise it refuses with one line naming
the row and the two files (exit 2), and writes nothing.

    python -m bench.merge_results --config configs/benchmark/spleen.toml \\
        --part bench/results/scenarios/spleen_full_results.json.gz \\
        --part benchmark_out/spleen/distill/results.json --out benchmark_out/spleen/merged

writes ``results.json`` and the page (``results.md``, ``.csv``, ``.png``, ``comparisons.csv``:
the verdict and paired comparisons of :func:`coordinator.distill.report.write_results`) into
``--out``. Rows keep the order of their first appearance, part by part; a shared row is taken
from the first part holding it. The page states the rows' training time, summed (a part that
reused finished runs has no wall time of its own to add) and names the config's rows that no
part holds.
(Written here because the check is specific to this project's rows: no library merges them.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common.config import ConfigError, load_config
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.results_file import ResultRow, ResultsError, read_rows_file, write_rows
from coordinator.distill.rows import configured_rows

TIME_LABEL = ("Merged from parts: training time of the rows (all seeds; scoring and teachers "
              "not counted)")


class MergeError(ValueError):
    """Parts that cannot be merged; the message names the row and the files."""


def scores(row: ResultRow) -> Any:
    """What must agree for a row found in two parts: its per-case scores (a student row's
    ``seed_cases`` or ``cases``), else its per-site summaries (teacher rows)."""
    return row.get("seed_cases") or row.get("cases") or row.get("sites")


def merge(parts: list[tuple[str, list[ResultRow]]]) -> list[ResultRow]:
    """The union of the parts' rows (first appearance order); :class:`MergeError` when a row
    found twice differs or a part shares no row with the parts before it."""
    merged: dict[str, tuple[str, ResultRow]] = {}
    for name, rows in parts:
        shared = 0
        for row in rows:
            run = str(row["run"])
            if run not in merged:
                continue
            first, kept = merged[run]
            if scores(kept) != scores(row):
                raise MergeError(f"row {run} differs between {first} and {name}: the parts were "
                                 "not made from the same teachers, test cases and code")
            shared += 1
        if merged and not shared:
            raise MergeError(f"{name} shares no row with the parts before it: nothing shows "
                             "they pair on the same teachers and test cases")
        for row in rows:
            merged.setdefault(str(row["run"]), (name, row))
    return [row for _, row in merged.values()]


def missing_rows(cfg: ExperimentConfig, rows: list[ResultRow]) -> list[str]:
    """The config's row names (``coordinator distill --rows`` names) that no merged row
    carries: ``single`` needs a ``single_*`` row, a weighting label its ``multi_<label>`` row."""
    runs = {str(r["run"]) for r in rows}

    def present(name: str) -> bool:
        if name == "single":
            return any(r.startswith("single_") for r in runs)
        return name in runs or f"multi_{name}" in runs

    return [n for n in configured_rows(cfg) if not present(n)]


def main(argv: list[str] | None = None) -> int:
    """Merge the ``--part`` files into ``--out`` (see the module doc); exit 2 on bad input."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True,
                   help="the benchmark config every part ran (title, default row, seeds)")
    p.add_argument("--part", type=Path, action="append", required=True,
                   help="a results.json or results .json.gz (repeat: two or more)")
    p.add_argument("--out", type=Path, required=True, help="folder for the merged page")
    args = p.parse_args(argv)
    from coordinator.distill.report import write_results

    try:
        if len(args.part) < 2:
            raise MergeError("give two or more --part files")
        cfg = load_config(args.config, ExperimentConfig)
        rows = merge([(str(f), read_rows_file(f)) for f in args.part])
    except (ConfigError, ResultsError, MergeError) as exc:
        print(f"merge_results: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out, rows)
    seconds = sum(float(r.get("train_seconds") or 0.0) for r in rows)
    absent = missing_rows(cfg, rows)
    write_results(rows, cfg, args.out, seconds, time_label=TIME_LABEL,
                  not_run=[f"{', '.join(absent)} (in the config, in no part)"] if absent else [])
    print(f"merged {len(rows)} rows from {len(args.part)} parts: {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
