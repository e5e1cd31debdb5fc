"""Draw docs/img/architecture.png (run: .venv/bin/python docs/make_architecture.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402


def box(ax: plt.Axes, x: float, y: float, w: float, h: float, text: str, color: str) -> None:
    """A rounded box with centred text."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="0.3"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8)


def arrow(ax: plt.Axes, a: tuple[float, float], b: tuple[float, float], text: str) -> None:
    """An annotated arrow from a to b."""
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color="0.25"))
    ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.15, text, ha="center", fontsize=6.5)


def main() -> None:
    """Sites on the left, SuperLink in the middle, coordinator on the right."""
    fig, ax = plt.subplots(figsize=(11, 5.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 5.2)
    ax.axis("off")
    for i, (name, arch) in enumerate([("site A", "DeepLabV3+"), ("site B", "PSPNet"),
                                      ("site C", "FCN-ResNet101")]):
        y = 3.6 - 1.6 * i
        box(ax, 0.1, y, 3.4, 1.2, f"{name}: flower-supernode\n+ site_node ClientApp\n"
            f"private NIfTI -> teacher {arch}\negress policy, signed log", "#dff0d8")
        up, down = ("teacher outputs + receipt", "proxy slices, student") if i == 1 else ("", "")
        arrow(ax, (3.6, y + 0.75), (5.1, 2.75), up)
        arrow(ax, (5.1, 2.45), (3.6, y + 0.45), down)
    box(ax, 5.2, 2.0, 1.5, 1.2, "flower-superlink\nTLS :8000\nnode auth", "#fcf8e3")
    arrow(ax, (6.8, 2.6), (7.3, 2.6), "")
    box(ax, 7.4, 1.2, 3.4, 2.8, "coordinator ServerApp\npublic proxy set\nteacher-output cache"
        "\nadaptive Dice weighting w_j(x)\nKD = Seg + a*Mid + b*KL\nstudent ENet/ESPNet/"
        "MobileNetV2 (GPU)\n-> torch.export / ONNX + model card", "#d9edf7")
    ax.set_title("fedmtkd: what crosses a site boundary is only teacher outputs on proxy data")
    out = Path(__file__).parent / "img" / "architecture.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
