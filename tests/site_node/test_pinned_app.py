"""App pinning: a site checks the coordinator's FAB and only ever runs its installed app."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from site_node import pinned_app
from site_node.pinned_app import UntrustedAppError, check_fab, fab_digest

APP_DIR = Path(__file__).resolve().parents[2] / "deploy" / "flwr_app"


@pytest.fixture(scope="module")
def real_fab(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The FAB ``flwr build`` makes from ``deploy/flwr_app`` (what ``flwr run`` submits)."""
    root = tmp_path_factory.mktemp("fab")
    shutil.copytree(APP_DIR, root / "app")
    flwr = Path(sys.executable).parent / "flwr"
    subprocess.run([str(flwr), "build", "--app", "app"], cwd=root, check=True,
                   capture_output=True, env={"FLWR_TELEMETRY_ENABLED": "0", "PATH": "/usr/bin"})
    (fab,) = root.glob("*.fab")
    return fab.read_bytes()


def _rezip(fab: bytes, extra: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as src, zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, extra.pop(name, src.read(name)))
        for name, data in extra.items():
            dst.writestr(name, data)
    return buf.getvalue()


def test_the_project_fab_is_accepted(real_fab: bytes) -> None:
    assert check_fab(real_fab) == fab_digest(real_fab)
    assert len(fab_digest(real_fab)) == 16


def test_a_fab_with_code_is_refused(real_fab: bytes) -> None:
    evil = _rezip(real_fab, {"site_node/app.py": b"import os\n"})
    with pytest.raises(UntrustedAppError, match=r"carries 'site_node/app\.py'"):
        check_fab(evil)
    with pytest.raises(UntrustedAppError, match=r"carries 'x\.pth'"):
        check_fab(_rezip(real_fab, {"x.pth": b"import evil"}))


def test_a_fab_naming_another_clientapp_is_refused(real_fab: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(real_fab)) as zf:
        text = zf.read("pyproject.toml").decode()
    other = text.replace('clientapp = "site_node.app:app"', 'clientapp = "evil.app:app"')
    assert other != text
    with pytest.raises(UntrustedAppError, match=r"names clientapp 'evil\.app:app'"):
        check_fab(_rezip(real_fab, {"pyproject.toml": other.encode()}))


def test_garbage_is_refused() -> None:
    with pytest.raises(UntrustedAppError, match="not a zip archive"):
        check_fab(b"definitely not a zip")


def test_pins_replace_install_and_load(real_fab: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.runtime.run_clientapp as rc

    for name in ("install_from_fab", "get_load_client_app_fn"):
        monkeypatch.setattr(rc, name, getattr(rc, name))  # restored after the test
    pinned_app.install_pins()
    with pytest.raises(UntrustedAppError):
        rc.install_from_fab(_rezip(real_fab, {"evil.py": b""}), skip_prompt=True)
    assert rc.install_from_fab(real_fab, skip_prompt=True) == Path(".")
    loader = rc.get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
    from site_node.app import app

    assert loader("fedmtkd/fedmtkd-app", "0.1.0", "somehash") is app


def test_shim_runs_the_pinned_clientapp(tmp_path: Path) -> None:
    shim = pinned_app.write_shim(tmp_path / "bin")
    assert shim.name == "flwr-clientapp" and shim.stat().st_mode & 0o111
    out = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=120,
                         check=True)
    assert "--runtime-api-address" in out.stdout
