"""``python -m site_node.supernode --poll-interval S -- flower-supernode ARGS``: Flower's SuperNode,
polling every ``S`` seconds instead of every 3 s (``site-node run --poll-interval S``).

Why a patch: Flower 1.42's SuperNode loop (``flwr.supernode.start_client_internal``) sleeps a
hard-coded ``time.sleep(3)`` whenever a pull from the SuperLink finds no message, and 0.5 s
between checks while it waits for the ClientApp's reply; no flag, setting or environment
variable changes either. A message sent just after a reply therefore waits up to 3 s at every
site. This wrapper replaces the module-level ``time`` that module uses by a proxy whose
``sleep`` is capped at ``S`` (everything else is the real :mod:`time`), then runs Flower's own
``flower_supernode()`` entry point in this process with ``ARGS`` (the ``flower-supernode``
word only names the program, so the printed command reads as the plain one with a prefix);
nothing else of Flower changes.

It also sets ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (Flower's own setting, seconds, 0.01..60)
for the SuperExec the SuperNode starts, so a pulled message is handed to a ClientApp within
``S`` instead of 1 s. A smaller ``S`` costs one loopback HTTP request per ``S`` per site while
idle (0.2 s: 5 requests/s).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: Flower's own environment variable for the SuperExec's task poll (``run_superexec.py``).
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
MIN_POLL, MAX_POLL = 0.01, 60.0  # Flower's bounds for SUPEREXEC_POLL_ENV
FLOWER_IDLE_SLEEP = 3.0  # Flower 1.42's hard-coded sleep after an empty pull


class CappedTime(ModuleType):
    """Stand-in for the :mod:`time` module of one Flower module: ``sleep(s)`` sleeps
    ``min(s, cap)``; every other attribute is the real module's."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        """``time.sleep(min(seconds, cap))``."""
        time.sleep(min(float(seconds), self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def check_interval(value: float) -> float:
    """``value`` if it is a finite number of seconds in ``[0.01, 60]``, else ValueError."""
    if not math.isfinite(value) or not MIN_POLL <= value <= MAX_POLL:
        raise ValueError(f"poll interval must be {MIN_POLL}..{MAX_POLL} s, got {value}")
    return value


def install_poll_cap(interval: float) -> None:
    """Cap the SuperNode loop's sleeps at ``interval`` s and set the SuperExec's poll."""
    import flwr.supernode.start_client_internal as sci

    check_interval(interval)
    sci.time = CappedTime(interval)  # type: ignore[assignment]
    os.environ[SUPEREXEC_POLL_ENV] = f"{interval:g}"


def command(interval: float, flower_cmd: Sequence[str], python: str = sys.executable
            ) -> list[str]:
    """The argv that runs ``flower_cmd`` (``[flower-supernode, ARGS...]``) in this wrapper,
    polling every ``interval`` s."""
    return [python, "-m", "site_node.supernode", "--poll-interval", f"{interval:g}", "--",
            *flower_cmd]


def _parse(argv: list[str]) -> tuple[float, list[str]]:
    if len(argv) < 4 or argv[0] != "--poll-interval" or argv[2] != "--":
        raise SystemExit("usage: python -m site_node.supernode --poll-interval S -- "
                         "flower-supernode ARGS...")
    try:
        return check_interval(float(argv[1])), argv[3:]
    except ValueError as exc:
        raise SystemExit(f"site_node.supernode: {exc}") from None


def main(argv: list[str] | None = None) -> None:
    """Patch the poll, then run Flower's ``flower_supernode()`` with the remaining argv."""
    interval, rest = _parse(list(sys.argv[1:] if argv is None else argv))
    install_poll_cap(interval)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = rest  # rest[0]: the flower-supernode program name (argparse's prog)
    flower_supernode()


if __name__ == "__main__":
    main()
