"""Results tables shaped like the paper's Tables 3-5 (markdown + CSV) and a bar plot."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from common.stats import ALPHA, PairedComparison, align_scores, compare_paired
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.results_file import ResultRow
from coordinator.distill.verdict import verdict_markdown

if TYPE_CHECKING:
    from coordinator.distill.sites import RunStatus

log = logging.getLogger(__name__)

METRICS = (("dice_mean", "Dice"), ("voe_mean", "VOE"), ("hd95_mean", "HD95 mm"))
PAIRED_TEST = "wilcoxon"  # or "t" (paired t); see common.stats


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def _sd_cells(row: ResultRow) -> list[str]:
    """``[sd, n seeds]`` of a row averaged over seeds, ``["-", "1"]`` otherwise."""
    if "mean_dice_sd" not in row:
        return ["-", "1"]
    return [f"{row['mean_dice_sd']:.3f}", str(len(row["seeds"]))]


def table_rows(rows: list[ResultRow]) -> tuple[list[str], list[list[str]]]:
    """Header and body: one row per run, Dice/VOE/HD95 per site, Dice/VOE/HD95 on the
    labelled proxy when some row was scored there (no site test case; ``-`` for rows that were
    not), then mean Dice over sites (and its sd over seeds when some rows were repeated)."""
    sites = list(rows[0]["sites"])
    repeated = any("mean_dice_sd" in r for r in rows)
    on_proxy = any(r.get("proxy") for r in rows)
    header = ["run", "teachers", "weighting"]
    header += [f"{s} {label}" for s in sites for _, label in METRICS]
    header += [f"proxy {label}" for _, label in METRICS] if on_proxy else []
    header += ["mean Dice"] + (["mean Dice sd", "seeds"] if repeated else [])
    body = []
    for r in rows:
        cells = [r["run"], "+".join(r["teachers"]) or "-", r.get("weighting") or "-"]
        cells += [_fmt(r["sites"][s].get(k)) for s in sites for k, _ in METRICS]
        if on_proxy:
            cells += ([_fmt(r["proxy"].get(k)) for k, _ in METRICS] if r.get("proxy")
                      else ["-"] * len(METRICS))
        body.append(cells + [_fmt(r["mean_dice"])] + (_sd_cells(r) if repeated else []))
    return header, body


def to_markdown(header: list[str], body: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n"


def _seeds_note(cfg: ExperimentConfig) -> str:
    if cfg.repeats == 1:
        return f" One student seed ({cfg.seed}) per run."
    return (f" Student rows: mean over seeds {cfg.seed}..{cfg.seed + cfg.repeats - 1} "
            "(per-site columns too); mean Dice ± sample sd.")


def status_note(status: RunStatus | None, not_run: list[str]) -> str:
    """The report's opening lines: how the teachers were reached, the sites that are missing
    (a run that went on with fewer sites than the config's), and the rows not run (a page
    merged from parts has no status: only the rows not run)."""
    if status is None and not not_run:
        return ""
    lines: list[str] = []
    if status is not None:
        how = ("federated: Flower messages to each site's SuperNode; teachers and test data "
               "stayed at the sites" if status.transport == "federated" else
               "--local: the site folders were read in-process")
        lines.append(f"Transport: {how}.")
        if status.missing:
            lines.append(f"**Missing sites ({len(status.missing)} of {len(status.sites)}): "
                         + "; ".join(f"{n} ({status.sites[n].detail or status.sites[n].state})"
                                     for n in status.missing) + ".** Their columns are absent.")
    lines += [f"Not run: {why}." for why in not_run]
    return "\n".join(f"> {line}" for line in lines) + "\n\n"


def no_test_cases(rows: list[ResultRow]) -> bool:
    """Whether no student row has a defined Dice at any site (no held-out case anywhere, e.g.
    every site trained its teacher on all its cases: ``small_site = "train_on_all"``)."""
    students = [r for r in rows if not str(r["run"]).startswith("teacher_")]
    return bool(students) and all(
        not any(isinstance(m.get("dice_mean"), float) and m["dice_mean"] == m["dice_mean"]
                for m in r["sites"].values()) for r in students)


def evaluation(rows: list[ResultRow]) -> str:
    """Which evaluation the table holds: ``"sites"`` (held-out test cases at the sites),
    ``"proxy"`` (none anywhere; student rows scored on the labelled proxy) or ``"none"``."""
    if not no_test_cases(rows):
        return "sites"
    return "proxy" if any(r.get("proxy") for r in rows) else "none"


def evaluation_line(rows: list[ResultRow]) -> str:
    """The report's first line after the title: which evaluation the numbers come from."""
    from coordinator.distill.proxy_score import PROXY_NOTE

    return {"sites": "**Evaluation: each site's held-out test volumes** (3D metrics; VOE = 1 - "
                     "Jaccard).",
            "proxy": f"**Evaluation: {PROXY_NOTE}.** No site gave a held-out score (no test "
                     "case, e.g. `small_site = \"train_on_all\"` everywhere, or no site scored): "
                     "the site columns are n/a and each student row is scored on the "
                     "coordinator's labelled proxy set "
                     "(`proxy Dice/VOE/HD95`: 3D metrics on each proxy case's own grid). The "
                     "students trained on these scans: the scores rank the rows but overstate "
                     "what they would score on unseen scans.",
            "none": "**Evaluation: none** (no held-out test case at any site, no labelled "
                    "proxy)."}[evaluation(rows)]


NO_TEST_NOTE = ("**No held-out test case at any site** (e.g. every site trained its teacher on "
                "all its cases: `small_site = \"train_on_all\"`): the site columns below are "
                "n/a and this table ranks nothing. Score the student on labelled scans it never "
                "saw (`coordinator predict` + `coordinator evaluate`).")


def write_results(rows: list[ResultRow], cfg: ExperimentConfig, out: Path, seconds: float,
                  status: RunStatus | None = None, not_run: list[str] | None = None,
                  time_label: str = "Wall time") -> None:
    """Write ``results.csv``, ``results.md`` and ``results.png`` into ``out``; the page
    states ``seconds`` after ``time_label``."""
    header, body = table_rows(rows)
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(body)
    intro = (f"# {cfg.name}: student `{cfg.student.model}`, {cfg.student.size}px, "
             f"{cfg.student.epochs} epochs, KD alpha={cfg.kd.alpha} beta={cfg.kd.beta} "
             f"T={cfg.kd.temperature}\n{evaluation_line(rows)}\n\n"  # right under the title
             f"{time_label} {seconds:.0f} s.{_seeds_note(cfg)}\n\n"
             + status_note(status, not_run or []))
    if evaluation(rows) == "none":
        log.warning("no held-out test case at any site: the results table has no scores")
        intro += f"> {NO_TEST_NOTE}\n\n"
    comps = compare_students(rows, cfg)
    write_comparisons_csv(comps, out / "comparisons.csv")
    title, _, intro = intro.partition("\n\n")  # the verdict follows the title block
    intro = f"{title}\n\n{verdict_markdown(comps, default_rule(rows, cfg))}{intro}"
    (out / "results.md").write_text(intro + to_markdown(header, body)
                                    + comparisons_markdown(comps) + costs_markdown(rows)
                                    + versus_fedavg(rows, cfg))
    if evaluation(rows) == "proxy":
        plot_results([{**r, "mean_dice": r["proxy"]["dice_mean"], "mean_dice_sd": 0.0}
                      for r in rows if r.get("proxy")], out / "results.png",
                     f"{cfg.name}: 3D Dice on the labelled proxy (optimistic: trained on it)")
    else:
        plot_results(rows, out / "results.png", f"{cfg.name}: mean 3D Dice over sites")
    if any(r.get("cost") for r in rows):
        write_costs_csv(rows, out / "costs.csv")
        plot_tradeoff(rows, out / "results_tradeoff.png", f"{cfg.name}: Dice vs bytes")
    log.info("results:\n%s", to_markdown(header, body))


def plot_results(rows: list[ResultRow], path: Path, title: str) -> None:
    """Horizontal bar chart of mean Dice per run (teachers grey, students blue/orange)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["run"] for r in rows]
    vals = [cast(float, r["mean_dice"]) for r in rows]
    errs = [r.get("mean_dice_sd", 0.0) for r in rows]
    colors = ["0.6" if n.startswith("teacher") else
              ("tab:orange" if n == "student_only" else "tab:blue") for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2))
    ax.barh(names[::-1], vals[::-1], xerr=errs[::-1], color=colors[::-1], capsize=2)
    for i, (v, e) in enumerate(zip(vals[::-1], errs[::-1], strict=True)):
        ax.text(v + e + 0.005, i, f" {v:.3f}" + (f" ± {e:.3f}" if e else ""), va="center",
                fontsize=8)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("mean 3D Dice")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- paired comparisons
Comparison = tuple[str, str, PairedComparison]  # (default run, other run, a=default - b=other)


def case_dice(row: ResultRow) -> dict[str, dict[str, float]]:
    """``{seed: {"site/case": Dice}}`` of a student row (``{}`` without per-case scores)."""
    per_seed: dict[str, Any] = row.get("seed_cases") or (
        {str(row.get("seed", "-")): row["cases"]} if row.get("cases") else {})
    return {seed: {f"{site}/{case}": float(v["dice"]) for site, cases in sites.items()
                   for case, v in cases.items()} for seed, sites in per_seed.items()}


def default_run(rows: list[ResultRow], cfg: ExperimentConfig) -> str | None:
    """The default multi-teacher run (first weighting rule), else the first ``multi_`` row."""
    names = [str(r["run"]) for r in rows]
    if cfg.runs.weightings and f"multi_{cfg.runs.weightings[0].label}" in names:
        return f"multi_{cfg.runs.weightings[0].label}"
    return next((n for n in names if n.startswith("multi_")), None)


def default_rule(rows: list[ResultRow], cfg: ExperimentConfig) -> str | None:
    """The weighting rule name of :func:`default_run` (``None`` when it is no config row)."""
    name = default_run(rows, cfg)
    return next((w.name for w in cfg.runs.weightings if f"multi_{w.label}" == name), None)


def compare_students(rows: list[ResultRow], cfg: ExperimentConfig,
                     test: str = PAIRED_TEST) -> list[Comparison]:
    """The default student against every other student row (no-KD, single teachers, other
    weightings), paired per seed and test case on Dice; rows without per-case scores (e.g.
    scored by federated sites, which return summaries only) are left out."""
    name = default_run(rows, cfg)
    by_name = {str(r["run"]): r for r in rows}
    if name is None or not case_dice(by_name[name]):
        return []
    base, out = case_dice(by_name[name]), []
    for other, row in by_name.items():
        if other == name or other.startswith("teacher_"):
            continue
        a, b, _, _ = align_scores(base, case_dice(row))
        if a.size:
            out.append((name, other, compare_paired(a, b, test=test, seed=cfg.seed)))
    return out


def _signed(v: float) -> str:
    return f"{v:+.3f}"


def _comparison_cells(c: PairedComparison) -> list[str]:
    return [f"{c.n_seeds} x {c.n_cases}", _signed(c.mean_diff),
            f"[{_signed(c.ci_low)}, {_signed(c.ci_high)}]", f"{c.p_value:.3g}",
            "yes" if c.significant() else "no"]


def comparison_sentences(comps: list[Comparison]) -> list[str]:
    """Which differences are significant at ``ALPHA``, in words."""
    lines = []
    for a, b, c in comps:
        if c.significant():
            word = "higher" if c.mean_diff > 0 else "lower"
            lines.append(f"`{a}` scores significantly {word} Dice than `{b}` "
                         f"({_signed(c.mean_diff)}, 95 % CI [{_signed(c.ci_low)}, "
                         f"{_signed(c.ci_high)}], p = {c.p_value:.3g}).")
    quiet = [f"`{b}`" for _, b, c in comps if not c.significant()]
    if quiet:
        lines.append(f"The differences between `{comps[0][0]}` and {', '.join(quiet)} are not "
                     f"significant at {ALPHA}.")
    return lines


def comparisons_markdown(comps: list[Comparison]) -> str:
    """The ``## Paired comparisons`` section of results.md (empty without comparisons)."""
    if not comps:
        return ""
    test = "Wilcoxon signed-rank" if comps[0][2].test == "wilcoxon" else "paired t"
    header = ["student", "vs", "seeds x cases", "mean Δ Dice", "95 % CI", f"p ({test})",
              f"p < {ALPHA}"]
    body = [[f"`{a}`", f"`{b}`", *_comparison_cells(c)] for a, b, c in comps]
    intro = ("\n## Paired comparisons (Dice)\n\nΔ = default student minus the other run, "
             "paired on the same seed and test case. 95 % CI: percentile bootstrap resampling "
             f"seeds and test cases (10,000 replicates). p: two-sided {test} test on the "
             "per-case differences averaged over seeds (cases are the independent units); "
             "not corrected for multiple comparisons.")
    if min(c.n_cases for _, _, c in comps) < 6 and comps[0][2].test == "wilcoxon":
        intro += " With fewer than 6 test cases the signed-rank test cannot reach p < 0.05."
    words = "\n".join(f"- {line}" for line in comparison_sentences(comps))
    return intro + "\n\n" + to_markdown(header, body) + "\n" + words + "\n"


def write_comparisons_csv(comps: list[Comparison], path: Path) -> None:
    """One line per comparison: runs, n, mean difference, CI, p, test, significant."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["student", "vs", "seeds", "cases", "mean_diff_dice", "ci_low",
                         "ci_high", "p_value", "test", "significant"])
        writer.writerows([a, b, c.n_seeds, c.n_cases, c.mean_diff, c.ci_low, c.ci_high,
                          c.p_value, c.test, c.significant()] for a, b, c in comps)


# ----------------------------------------------------------------------------- cost columns
#: Marker of each privacy class (what left the sites) in the trade-off plot.
PRIVACY_MARKERS = {"nothing": ("o", "tab:green"), "outputs on proxy": ("s", "tab:blue"),
                   "model weights": ("^", "tab:red"), "raw data (pooled)": ("X", "0.4")}


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f} MB" if n else "0"


def cost_table(rows: list[ResultRow], numeric: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and body of the cost table: one line per row that has a ``cost`` (teacher rows
    have none): per site bytes sent (left the site) / received, messages, what left, wall s.
    ``numeric``: exact byte counts (CSV) instead of MB."""
    costed = [r for r in rows if r.get("cost")]
    if not costed:
        return [], []
    sites = list(costed[0]["cost"]["per_site"])
    header = ["run", "what left the sites"]
    header += [f"{s} {d}" for s in sites for d in ("sent", "received")]
    header += ["messages", "train wall s", "where"]
    fmt = str if numeric else _mb
    body = []
    for r in costed:
        c = r["cost"]
        cells = [r["run"], c["left_site"]]
        cells += [fmt(c["per_site"][s][d]) for s in sites for d in ("sent", "received")]
        body.append(cells + [str(c["messages"]), f"{c['wall_seconds']:.0f}", c["where"]])
    return header, body


def costs_markdown(rows: list[ResultRow]) -> str:
    """The ``## Cost`` section of results.md (empty when no row has a cost)."""
    header, body = cost_table(rows)
    if not body:
        return ""
    intro = ("\n## Cost per site over one training run\n\nBytes = serialized Flower payloads "
             "(protobuf RecordDict) of every message of one training run (one seed); sent = "
             "left the site, received = arrived at it. Scoring messages are not counted (the "
             "same for every federated row). Train wall s: training time of the row over all "
             "its seeds (MT-KD: teacher queries excluded, they are cached). In --local the "
             "coordinator process reads the site folders itself; the bytes are those of the "
             "messages the federated path sends (MT-KD: query.teacher_outputs requests and "
             "fp16 replies, from the cached outputs; FedAvg: Flower's FedAvg messages as "
             "query.fedavg_train; pooled: each site's prepared training slices).\n\n")
    return intro + to_markdown(header, body)


def versus_fedavg(rows: list[ResultRow], cfg: ExperimentConfig) -> str:
    """One line: the default student's mean Dice and bytes (left the sites) as fractions of
    the ``fedavg`` row's (empty without both rows)."""
    by = {str(r["run"]): r for r in rows}
    name = default_run(rows, cfg)
    if name is None or "fedavg" not in by or not by[name].get("cost"):
        return ""
    a, f = by[name], by["fedavg"]
    dice_a, dice_f = cast(float, a["mean_dice"]), cast(float, f["mean_dice"])
    sent_a, sent_f = a["cost"]["bytes_sent"], f["cost"]["bytes_sent"]
    frac = f"{sent_a / sent_f:.3g}" if sent_f else "n/a"
    return (f"\n`{name}` vs `fedavg`: mean Dice {dice_a:.3f} vs {dice_f:.3f} "
            f"({dice_a / dice_f:.3f} of FedAvg's, Δ "
            f"{dice_a - dice_f:+.3f}); bytes that left the sites {sent_a} vs "
            f"{sent_f} ({frac} of FedAvg's); what left: {a['cost']['left_site']} vs "
            f"{f['cost']['left_site']}.\n")


def write_costs_csv(rows: list[ResultRow], path: Path) -> None:
    """``costs.csv``: the cost table with exact byte counts."""
    header, body = cost_table(rows, numeric=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(body)


def dice_ci(row: ResultRow) -> tuple[float, float]:
    """``(minus, plus)`` half-widths of a 95 % bootstrap CI (seeds x cases) of the row's
    per-case mean Dice; ``(0, 0)`` without per-case scores."""
    from common.stats import bootstrap_ci

    cd = case_dice(row)
    mat, _, _, _ = align_scores(cd, cd)
    if not mat.size:
        return 0.0, 0.0
    lo, hi = bootstrap_ci(mat, seed=0)
    m = float(mat.mean())
    return max(m - lo, 0.0), max(hi - m, 0.0)


def plot_tradeoff(rows: list[ResultRow], path: Path, title: str) -> None:
    """Mean Dice (95 % CI) against bytes that left the sites (log x; 0 B drawn at 1 B), one
    point per costed row, the marker its privacy class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen: set[str] = set()
    for r in (r for r in rows if r.get("cost")):
        left = r["cost"]["left_site"]
        x = max(int(r["cost"]["bytes_sent"]), 1)
        lo, hi = dice_ci(r)
        marker, color = PRIVACY_MARKERS.get(left, ("D", "k"))
        ax.errorbar([x], [cast(float, r["mean_dice"])], yerr=[[lo], [hi]], fmt=marker, color=color,
                    capsize=3, label=None if left in seen else left, markersize=8)
        ax.annotate(r["run"], (x, r["mean_dice"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
        seen.add(left)
    ax.set_xscale("log")
    ax.set_xlabel("bytes that left the sites over one training run (log; 0 B drawn at 1 B)")
    ax.set_ylabel("mean 3D Dice (95 % CI)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title="what left the sites", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
