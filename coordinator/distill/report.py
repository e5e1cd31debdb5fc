"""Results tables shaped like the paper's Tables 3-5 (markdown + CSV) and a bar plot."""

from __future__ import annotations

import csv
from pathlib import Path

from coordinator.distill.config import ExperimentConfig

METRICS = (("dice_mean", "Dice"), ("voe_mean", "VOE"), ("hd95_mean", "HD95 mm"))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def _sd_cells(row: dict) -> list[str]:
    """``[sd, n seeds]`` of a row averaged over seeds, ``["-", "1"]`` otherwise."""
    if "mean_dice_sd" not in row:
        return ["-", "1"]
    return [f"{row['mean_dice_sd']:.3f}", str(len(row["seeds"]))]


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and body: one row per run, Dice/VOE/HD95 per site, then mean Dice (and its sd
    over seeds when some rows were repeated)."""
    sites = list(rows[0]["sites"])
    repeated = any("mean_dice_sd" in r for r in rows)
    header = ["run", "teachers", "weighting"]
    header += [f"{s} {label}" for s in sites for _, label in METRICS] + ["mean Dice"]
    header += ["mean Dice sd", "seeds"] if repeated else []
    body = []
    for r in rows:
        cells = [r["run"], "+".join(r["teachers"]) or "-", r.get("weighting") or "-"]
        cells += [_fmt(r["sites"][s].get(k)) for s in sites for k, _ in METRICS]
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


def write_results(rows: list[dict], cfg: ExperimentConfig, out: Path, seconds: float) -> None:
    """Write ``results.csv``, ``results.md`` and ``results.png`` into ``out``."""
    header, body = table_rows(rows)
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(body)
    intro = (f"# {cfg.name}: student `{cfg.student.model}`, {cfg.student.size}px, "
             f"{cfg.student.epochs} epochs, KD alpha={cfg.kd.alpha} beta={cfg.kd.beta} "
             f"T={cfg.kd.temperature}\n\n3D metrics on each site's held-out test volumes "
             f"(VOE = 1 - Jaccard). Wall time {seconds:.0f} s.{_seeds_note(cfg)}\n\n")
    (out / "results.md").write_text(intro + to_markdown(header, body))
    plot_results(rows, out / "results.png", f"{cfg.name}: mean 3D Dice over sites")
    print(to_markdown(header, body))


def plot_results(rows: list[dict], path: Path, title: str) -> None:
    """Horizontal bar chart of mean Dice per run (teachers grey, students blue/orange)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["run"] for r in rows]
    vals = [r["mean_dice"] for r in rows]
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
