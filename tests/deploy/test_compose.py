"""deploy/check_compose.py on the real compose file and on broken copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy._load import ROOT, copy_compose_repo, edit_compose, load_script

cc = load_script("check_compose")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of what the compose file references."""
    return copy_compose_repo(tmp_path)


def _edit(repo: Path, fn) -> list[str]:
    return edit_compose(repo, fn)


def test_real_file_has_no_problems() -> None:
    assert cc.check_compose(ROOT / "docker-compose.yml", ROOT) == []
    assert cc.main(["--root", str(ROOT)]) == 0


def test_missing_service(repo: Path) -> None:
    problems = _edit(repo, lambda d: d["services"].pop("site-c"))
    assert any("missing service 'site-c'" in p for p in problems)


def test_missing_entrypoint(repo: Path) -> None:
    (repo / "deploy/entrypoints/site.sh").unlink()
    problems = cc.check_compose(repo / "docker-compose.yml", repo)
    assert sum("site.sh not found" in p for p in problems) == 3


def test_unset_env_var(repo: Path) -> None:
    problems = _edit(repo, lambda d: d["services"]["superlink"]["environment"].pop("SERVER_KEY"))
    assert problems == ["superlink: superlink.sh uses $SERVER_KEY but the service does not set it"]


def test_required_and_stray_env_vars(repo: Path) -> None:
    def edit(d: dict) -> None:
        d["services"]["coordinator"]["environment"].pop("AUDIT_KEYS_DIR")
        d["services"]["coordinator"]["environment"]["SITE_KEYS_DIR"] = "/certs/sites"
    assert sorted(_edit(repo, edit)) == [
        "coordinator: coordinator.sh uses $AUDIT_KEYS_DIR but the service does not set it",
        "coordinator: sets SITE_KEYS_DIR but no entrypoint script of role coordinator reads it"]


def test_required_vars_parses_the_guard_lines() -> None:
    text = '#!/bin/bash\n# ${DOC:?}\n: "${A:?}" "${B:?x}"\nif x; then\n  : "${C:?}"\nfi\n'
    assert cc.required_vars(text) == {"A", "B", "C"}
    assert cc.required_vars(text, unconditional=True) == {"A", "B"}


def test_duplicate_port(repo: Path) -> None:
    problems = _edit(repo, lambda d: d["services"]["coordinator"].update(ports=["8000:9000"]))
    assert any("host port 8000" in p for p in problems)


def test_shared_site_volume_and_root_user(repo: Path) -> None:
    def share(d: dict) -> None:
        d["services"]["site-b"]["volumes"][0] = "site-a-local:/local"
    assert any("shared with site-a" in p for p in _edit(repo, share))
    df = repo / "deploy/Dockerfile"
    df.write_text(df.read_text() + "\nUSER root\n")
    assert any("non-root USER" in p for p in cc.check_compose(repo / "docker-compose.yml", repo))


def test_site_may_not_mount_private_certs(repo: Path) -> None:
    def leak(d: dict) -> None:
        d["services"]["site-b"]["volumes"].append(
            {"type": "volume", "source": "certs", "target": "/certs/all", "read_only": True})
        d["services"]["site-c-keys"]["volumes"].append("certs:/certs:ro")
    problems = _edit(repo, leak)
    sites = [p for p in problems if "a site may see only certs/public" in p]
    assert sorted(p.split(":")[0] for p in sites) == ["site-b", "site-c-keys"]
    custody = sorted(p.split(" is in ")[0] for p in problems if p not in sites)
    assert custody == sorted(2 * ["coordinator: SUPEREXEC_SECRET /certs/superexec.secret",
                                  "superlink: SERVER_KEY /certs/superlink/server.key",
                                  "superlink: SUPEREXEC_SECRET /certs/superexec.secret"])
