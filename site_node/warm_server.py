"""``python -m site_node.warm_server --socket PATH [--parent-pid PID]``: the site's warm
ClientApp server (:mod:`site_node.warm`) serving the pinned ClientApp.

Started by ``site-node run`` (:func:`site_node.warm.spawn`) beside the SuperNode. It preloads
Flower's ClientApp runtime, :mod:`site_node.app` and the handlers' imports, installs the app
pins (:func:`site_node.pinned_app.install_pins`) and forks one child per task that runs exactly
what the ``flwr-clientapp`` shim would (:func:`site_node.pinned_app.run_pinned`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from site_node.pinned_app import install_pins, run_pinned
from site_node.warm import serve


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, then :func:`site_node.warm.serve` the pinned ClientApp."""
    p = argparse.ArgumentParser(prog="python -m site_node.warm_server", description=__doc__)
    p.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on")
    p.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) "
                   "is no longer the parent")
    args = p.parse_args(argv)
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy: no BLAS pool in the fork parent
    from common.logs import ensure_logging

    ensure_logging()
    install_pins()
    serve(args.socket, run_pinned, parent_pid=args.parent_pid)


if __name__ == "__main__":
    main()
