"""App pinning: a site runs only its own installed ``site_node.app``, never code it is sent.

Flower's SuperNode serves each task by starting ``flwr-clientapp`` (looked up on ``PATH``). That
process installs the FAB (Flower App Bundle) the coordinator submitted with ``flwr run`` and
imports the ``clientapp`` the FAB names, so by default a coordinator can push code to a site.
``site-node run`` closes that door: it writes a shim named ``flwr-clientapp`` into
``<state-dir>/bin`` (:func:`write_shim`) and starts the SuperNode with that folder first on
``PATH``. The shim runs :func:`main`, which replaces two steps of Flower's ClientApp process:

1. *install* becomes :func:`check_fab`: the FAB is inspected, not installed. It may hold only
   data files (``pyproject.toml``, ``*.md``/``*.txt``/``*.toml``, Flower's ``.info/CONTENT``)
   and must name ``clientapp = "site_node.app:app"``. Anything else fails the task with a
   one-line ``UntrustedAppError`` (returned to the coordinator as the task's error reply).
2. *load* always returns the site's installed :data:`site_node.app.app`; nothing from the FAB is
   ever imported, so even an accepted FAB cannot change what runs here.

The FAB's ``[tool.flwr.app.config]`` values still reach the app as run config; the app
validates every value it reads.

Speed: the shim first hands its task to the site's warm ClientApp server
(:mod:`site_node.warm`), whose forked child runs exactly :func:`run_pinned` with the shim's
argv and stdio but without paying for the imports again; without a server it runs here.
"""

from __future__ import annotations

import hashlib
import io
import logging
import stat
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PINNED_CLIENTAPP = "site_node.app:app"
SHIM_NAME = "flwr-clientapp"
DATA_SUFFIXES = (".toml", ".md", ".txt")
FLOWER_MANIFEST = ".info/CONTENT"
log = logging.getLogger(__name__)


class UntrustedAppError(RuntimeError):
    """The coordinator's FAB carries code or names another ClientApp than the pinned one."""


def fab_digest(content: bytes) -> str:
    """Short sha256 of a FAB, as printed in errors and logs."""
    return hashlib.sha256(content).hexdigest()[:16]


def _fab_members(content: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as zf:
            return {name: zf.read(name) for name in zf.namelist() if not name.endswith("/")}
    except zipfile.BadZipFile as exc:
        raise UntrustedAppError(f"FAB {fab_digest(content)} is not a zip archive") from exc


def _named_clientapp(pyproject: bytes, digest: str) -> str:
    try:
        cfg = tomllib.loads(pyproject.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UntrustedAppError(f"FAB {digest}: unreadable pyproject.toml ({exc})") from exc
    comps = cfg.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    return str(comps.get("clientapp", ""))


def check_fab(content: bytes) -> str:
    """Accept a FAB that holds only data files and names the pinned ClientApp; its digest.

    Raises :class:`UntrustedAppError` naming the FAB's digest and the first offending file.
    """
    digest = fab_digest(content)
    members = _fab_members(content)
    for name in sorted(members):
        if name != FLOWER_MANIFEST and not name.endswith(DATA_SUFFIXES):
            raise UntrustedAppError(f"FAB {digest} carries {name!r}; this site runs only its "
                                    f"installed {PINNED_CLIENTAPP} and accepts no code")
    if "pyproject.toml" not in members:
        raise UntrustedAppError(f"FAB {digest} has no pyproject.toml")
    named = _named_clientapp(members["pyproject.toml"], digest)
    if named != PINNED_CLIENTAPP:
        raise UntrustedAppError(f"FAB {digest} names clientapp {named!r}; this site runs only "
                                f"{PINNED_CLIENTAPP}")
    return digest


def _checked_install(fab_content: bytes, *_: Any, **__: Any) -> Path:
    """Stand-in for Flower's ``install_from_fab``: check, log, install nothing."""
    from common.logs import ensure_logging

    ensure_logging()
    digest = check_fab(fab_content)
    log.info("fedmtkd: FAB %s checked (data files only); running the installed %s", digest,
             PINNED_CLIENTAPP)
    return Path(".")


def _pinned_loader(*_: Any, **__: Any) -> Callable[..., Any]:
    """Stand-in for Flower's ``get_load_client_app_fn``: always the installed app."""
    def load(*_a: Any, **_k: Any) -> Any:
        from site_node.app import app

        return app

    return load


def install_pins() -> None:
    """Patch Flower's ClientApp process so that it checks FABs and loads only our app."""
    import flwr.supernode.runtime.run_clientapp as run_clientapp

    run_clientapp.install_from_fab = _checked_install  # type: ignore[assignment]
    run_clientapp.get_load_client_app_fn = _pinned_loader


def write_shim(bin_dir: Path, python: str = sys.executable) -> Path:
    """Write ``bin_dir/flwr-clientapp`` that runs :func:`main` with ``python``; its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / SHIM_NAME
    path.write_text(f'#!/bin/sh\n# fedmtkd app pinning (site_node/pinned_app.py)\n'
                    f'exec "{python}" -m site_node.pinned_app "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def run_pinned(argv: list[str] | None = None) -> None:
    """Flower's ``flwr-clientapp`` with the two steps pinned; ``argv`` (without the program
    name) replaces ``sys.argv[1:]`` when given (a child of :mod:`site_node.warm`)."""
    if argv is not None:
        sys.argv = [SHIM_NAME, *argv]
    install_pins()
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    flwr_clientapp()


def main() -> None:
    """Entry point of the shim: hand the task to the site's warm ClientApp server
    (:mod:`site_node.warm`: a forked child that already holds the imports runs exactly
    :func:`run_pinned`) and exit with its code; without a server, :func:`run_pinned` here."""
    from site_node.warm import run_via_server

    code = run_via_server(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    run_pinned()


if __name__ == "__main__":
    main()
