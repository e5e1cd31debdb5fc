"""Draw docs/img/architecture.png (matplotlib only): sites, SuperLink, the coordinator's one
pipeline over two transports, and what crosses a site boundary.

    .venv/bin/python scripts/draw_architecture.py [--out docs/img/architecture.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

SITE = "#dff0d8"
LINK = "#fcf8e3"
COORD = "#d9edf7"
OUT = "#f2f2f2"


def box(ax: plt.Axes, x: float, y: float, w: float, h: float, text: str, colour: str,
        size: float = 8.5) -> None:
    """A rounded box with centred text (axes coordinates 0..100)."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.4", fc=colour, ec="#555"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax: plt.Axes, a: tuple[float, float], b: tuple[float, float], text: str = "",
          both: bool = False) -> None:
    style = "<|-|>" if both else "-|>"
    ax.annotate("", xy=b, xytext=a, arrowprops={"arrowstyle": style, "color": "#444", "lw": 1.2})
    if text:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 1.6, text, ha="center", fontsize=7)


def draw(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(13, 6.2))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 62)
    ax.axis("off")
    ax.set_title("fedmtkd: only teacher outputs on public proxy slices leave a site "
                 "(plus scores; weights only where a site's policy allows)", fontsize=11)
    for i, (name, teacher) in enumerate([("A", "DeepLabV3+"), ("B", "PSPNet"),
                                         ("C", "FCN-ResNet101")]):
        y = 44 - i * 19
        box(ax, 1, y, 27, 14,
            f"site {name}: site-node (SuperNode + ClientApp)\n"
            f"private scans (NIfTI / DICOM import)\nteacher {teacher}, trained here\n"
            "egress gate: policy, budget, replay, membership\n"
            "signed hash-chained log; own keys; pinned\ncoordinator key", SITE, 7.5)
        arrow(ax, (29.5, y + 7), (38, 31), both=True)
    ax.text(33, 50, "proxy slices in;\nlogits, AT maps, RC,\nscores out (TLS)", fontsize=7,
            ha="center")
    box(ax, 38.5, 25, 13, 12, "Flower SuperLink\nTLS, node auth\n(Message API)", LINK)
    arrow(ax, (52.5, 31), (58, 31), both=True)
    box(ax, 58.5, 30, 39, 25,
        "coordinator: one pipeline (run_experiment)\n"
        "plan runs -> teacher outputs -> train students -> score -> report -> export\n\n"
        "Sites adapter: GridSites (ServerApp, federated)  |  LocalSites (--local)\n"
        "same config, same seeds, same per-case scores and files\n\n"
        "public proxy set + teacher-output cache\n"
        "adaptive Dice weights w_j(x); KD = Seg + a*(AT + RC) + b*KL\n"
        "peers: no-KD, single teachers, Hinton KD, AT only, AMTML-KD,\n"
        "FedAvg / FedProx / FedBN, local-only, pooled", COORD, 8)
    box(ax, 58.5, 4, 18, 20,
        "results.md / .csv / .png\npaired statistics, verdict\ncosts per site\n"
        "run_status.json\nsigned coordinator log", OUT, 7.5)
    box(ax, 79.5, 4, 18, 20,
        "export/: student.pt2, ONNX fp32,\nint8 (gated), AOTInductor\nmodel card (latency,"
        "\nagreement)\n-> predict: NIfTI / DICOM-SEG\nwhole field, original grid", OUT, 7.5)
    arrow(ax, (70, 29.5), (68, 24.8))
    arrow(ax, (86, 29.5), (88, 24.8))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/architecture.png"))
    draw(ap.parse_args().out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
