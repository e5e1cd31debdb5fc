"""A trivial target for the warm server tests: echoes what a ClientApp child would receive."""

from __future__ import annotations

import os
import sys
import time


def target(argv: list[str]) -> None:
    """``argv = [CODE, WORDS...]``: print argv, env and cwd, echo stdin, exit CODE; ``sleep``
    as the first word sleeps (for signal forwarding)."""
    if argv[:1] == ["sleep"]:
        print("sleeping", flush=True)
        time.sleep(60)
    line = sys.stdin.readline().strip()
    print(f"argv={' '.join(argv[1:])} stdin={line} env={os.environ.get('WARM_TEST', '')} "
          f"cwd={os.getcwd()}")
    print("to stderr", file=sys.stderr)
    sys.exit(int(argv[0]))


def serve(path: str) -> None:
    """Serve ``target`` on ``path`` (no preload: only stdlib and site_node.warm)."""
    from pathlib import Path

    from site_node.warm import WarmServer, listen

    WarmServer(listen(Path(path)), target, parent_pid=os.getppid()).serve_forever(tick=0.05)


if __name__ == "__main__":
    serve(sys.argv[1])
