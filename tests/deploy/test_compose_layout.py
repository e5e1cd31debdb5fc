"""Layout, image extras and key custody of the compose deployment (deploy/check_compose.py),
the results export without private keys (deploy/export_results.py) and the build context
(.dockerignore)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
import yaml

from tests.deploy._load import ROOT, copy_compose_repo, edit_compose, load_script

cc = load_script("check_compose")
er = load_script("export_results")
PEM = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of what the compose file references."""
    return copy_compose_repo(tmp_path)


def _edit(repo: Path, fn) -> list[str]:
    return edit_compose(repo, fn)


def test_the_real_layout_keeps_run_state_and_keys_beside_the_data() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for site in ("site-a", "site-b", "site-c"):
        env = cc._as_dict(services[site]["environment"])
        assert env["SITE_DATA"] == "/local/data"
        assert {env["SITE_RUN"], env["SITE_STATE"]} == {"/local/run", "/local/state"}
        assert services[site]["restart"] == "no"  # a failing site stays down, visibly
    assert cc.check_layout(services, ROOT) == []


def test_a_run_or_state_folder_inside_the_data_folder_is_caught(repo: Path) -> None:
    def edit(d: dict) -> None:  # the layout site-node refuses at start
        d["services"]["site-b"]["environment"].update(SITE_DATA="/local",
                                                      SITE_RUN="/local/run")
        d["services"]["site-c"]["environment"]["SITE_STATE"] = "/local/data"
    problems = _edit(repo, edit)
    assert [p.split(" is inside")[0] for p in problems] == [
        "site-b: SITE_RUN /local/run", "site-b: SITE_STATE /local/state",
        "site-b: SITE_KEY /local/keys", "site-b: SITE_AUDIT_KEY /local/keys",
        "site-c: SITE_STATE /local/data"]


@pytest.mark.parametrize("install, extras", [
    ('RUN pip install ".[export]" \\\n && python -c "import onnx"', {"export"}),
    ("RUN pip install --no-deps '.[dev, export]'", {"dev", "export"}),
    ("RUN pip install . && python -c x", set()),
    ("RUN pip install torch==2.14.1", None),
])
def test_pip_extras_of_a_dockerfile(install: str, extras: set[str] | None) -> None:
    assert cc._pip_extras(f"FROM x\n{install}\nUSER 1\n") == extras


def test_an_image_without_the_export_extra_is_caught(repo: Path) -> None:
    df = repo / "deploy/Dockerfile"
    text = df.read_text()
    assert 'pip install ".[export]"' in text
    df.write_text(text.replace('pip install ".[export]"', "pip install ."))
    assert cc.check_compose(repo / "docker-compose.yml", repo) == [
        "coordinator: deploy/Dockerfile installs fedmtkd without the [export] extra the "
        "coordinator role needs (pip install '.[export]')"]


def test_the_coordinator_run_folder_is_never_the_exported_folder(repo: Path) -> None:
    problems = _edit(repo, lambda d: d["services"]["coordinator"]["environment"].update(
        EXPERIMENT_OUT="/results/out"))
    assert problems == [
        "coordinator: EXPERIMENT_OUT /results/out is in the host folder ./results (exported)",
        "coordinator: EXPERIMENT_OUT /results/out and the exported RESULTS_DIR /results "
        "overlap: the private audit key would be exported"]


def test_site_keys_in_a_volume_another_party_mounts_are_caught(repo: Path) -> None:
    def edit(d: dict) -> None:  # keys made straight into the coordinator's drop box
        d["services"]["site-a-keys"]["environment"]["SITE_KEYS"] = "/pub/keys"
    assert sorted(_edit(repo, edit)) == [
        f"site-a-keys: SITE_KEYS /pub/keys is in volume 'pubkeys', which {other} (another "
        "party) mounts" for other in ("coordinator", "init")]


def test_exporting_without_the_key_filter_is_caught(repo: Path) -> None:
    script = repo / "deploy/entrypoints/coordinator.sh"
    text = script.read_text()
    assert "export_results.py" in text
    script.write_text(text.replace('python "$here/../export_results.py" "$EXPERIMENT_OUT" '
                                   '"$RESULTS_DIR"', 'cp -r "$EXPERIMENT_OUT"/. "$RESULTS_DIR"'))
    assert cc.check_compose(repo / "docker-compose.yml", repo) == [
        "coordinator: coordinator.sh fills RESULTS_DIR without export_results.py, which "
        "leaves private keys behind"]


def _run_folder(out: Path) -> None:
    """What the ServerApp leaves in its out folder (keys as common.audit.keys writes them)."""
    (out / "audit").mkdir(parents=True)
    (out / "audit" / "coordinator.key").write_bytes(PEM)
    (out / "audit" / "coordinator.key").chmod(0o600)
    (out / "audit" / "coordinator.pub").write_text("-----BEGIN PUBLIC KEY-----\n")
    (out / "audit" / "coordinator.jsonl").write_text("{}\n")
    (out / "audit" / "coordinator.jsonl").chmod(0o600)
    (out / "export").mkdir()
    (out / "export" / "student.onnx").write_bytes(b"onnx")
    (out / "export" / "renamed.pem").write_bytes(b"x" * 10 + PEM)  # a key by its content
    (out / "teacher_cache").mkdir()
    (out / "teacher_cache" / "site-a.npy").write_bytes(b"0")
    (out / "federated_results.json").write_text("{}")


def test_export_leaves_private_keys_and_the_teacher_cache_behind(tmp_path: Path) -> None:
    src, dst = tmp_path / "out", tmp_path / "results"
    _run_folder(src)
    assert er.main([str(src), str(dst)]) == 0
    copied = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert copied == ["audit/coordinator.jsonl", "audit/coordinator.pub", "export/student.onnx",
                      "federated_results.json"]
    modes = {stat.S_IMODE(p.stat().st_mode) for p in dst.rglob("*")}
    assert modes == {0o644, 0o755} and stat.S_IMODE(dst.stat().st_mode) == 0o755
    assert (src / "audit" / "coordinator.key").read_bytes() == PEM  # the original stays


def test_export_fails_when_a_key_is_already_in_the_exported_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "out", tmp_path / "results"
    _run_folder(src)
    (dst / "old").mkdir(parents=True)
    (dst / "old" / "site.key").write_bytes(PEM)
    assert er.main([str(src), str(dst)]) == 1
    assert f"{dst / 'old' / 'site.key'}: a private key in the exported folder" in (
        capsys.readouterr().err)
    assert er.main([str(tmp_path / "missing"), str(dst)]) == 2


def test_the_build_context_holds_only_what_the_dockerfile_copies() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "**"  # everything out, then only what is needed back in
    back_in = {ln[1:].strip("/") for ln in lines if ln.startswith("!")}
    copies = re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", (ROOT / "deploy/Dockerfile").read_text(),
                        flags=re.M)
    needed = {src.split("/")[0] for line in copies for src in line.split()}
    assert needed <= back_in, needed - back_in
    assert not back_in & {".venv", "results", "demo_out", ".git", "runs"}
