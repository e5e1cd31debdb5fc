"""Bad input is refused early, with one line naming the file.

Each test here failed on the old tree (HEAD): a lying NIfTI header was allocated (7 GB and a
MemoryError), out-of-range config values loaded, malformed YAML / non-UTF-8 TOML raised a
parser traceback, unsafe site names reached paths.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.config import ConfigError, load_config
from common.data.errors import DataError
from common.data.nifti import check_claimed_size, load_nifti, save_nifti


# ----------------------------------------------------------------------------- NIfTI size
def _lying_nii_gz(path: Path, shape: tuple[int, ...]) -> Path:
    """A .nii.gz whose header claims ``shape`` float32 voxels but holds only 8 of them."""
    hdr = nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)).header.copy()
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4 + np.ones(8, np.float32).tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0))
    return path


def test_lying_gz_header_is_refused_before_allocation(tmp_path: Path) -> None:
    bomb = _lying_nii_gz(tmp_path / "bomb.nii.gz", (1200, 1200, 1200))
    assert bomb.stat().st_size < 200  # ~84 bytes claiming 1200^3 float32 = 6.9 GB
    with pytest.raises(DataError) as err:
        load_nifti(bomb)
    msg = str(err.value)
    assert msg.startswith(f"{bomb}: ") and "\n" not in msg
    assert f"{1200**3 * 4:,} bytes" in msg


def test_claimed_size_within_gzip_bound_and_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    ok = tmp_path / "ok.nii.gz"
    save_nifti(ok, np.random.default_rng(0).normal(size=(4, 8, 8)), (1.0, 1.0, 1.0))
    hdr = nib.load(str(ok)).header
    check_claimed_size(ok, hdr)  # 256 voxels: fine
    with pytest.raises(DataError, match=r"256 voxels, over the limit of 100$"):
        check_claimed_size(ok, hdr, max_voxels=100)
    import common.data.nifti as nifti

    monkeypatch.setattr(nifti, "MAX_VOXELS", 255)  # the cap is read at call time
    with pytest.raises(DataError, match="over the limit of 255"):
        load_nifti(ok)


def test_truncated_uncompressed_nii_is_refused(tmp_path: Path) -> None:
    full = tmp_path / "full.nii"
    save_nifti(full, np.ones((4, 8, 8)), (1.0, 1.0, 1.0))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(full.read_bytes()[:400])  # header + 48 of 1024 data bytes
    with pytest.raises(DataError, match=r"cut\.nii: header claims 1,024 bytes .* only 400 bytes"):
        load_nifti(cut)


# ----------------------------------------------------------------------------- config files
def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(("name", "content", "why"), [
    ("bad.yaml", "student: [1, 2\nkd: {", "cannot parse YAML"),
    ("bad.yml", "a: b: c\n", "cannot parse YAML"),
    ("bad.toml", b'name = "caf\xe9"\n', "not valid UTF-8 (byte 11)"),
    ("bad2.yaml", b"name: \xff\xfe\n", "not valid UTF-8 (byte 6)"),
    ("bad.toml", "name = \n", "cannot parse TOML"),
    ("list.yaml", "- 1\n- 2\n", "top level must be a mapping"),
])
def test_malformed_config_is_one_line(tmp_path: Path, name: str, content: bytes | str,
                                      why: str) -> None:
    from site_node.train_config import TeacherTrainConfig

    path = _write(tmp_path / name, content)
    with pytest.raises(ConfigError) as err:
        load_config(path, TeacherTrainConfig)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and why in msg and "\n" not in msg


@pytest.mark.parametrize(("toml", "field"), [
    ("epochs = 0", "epochs"),
    ("epochs = -3", "epochs"),
    ("batch_size = 0", "batch_size"),
    ("size = -32", "size"),
    ("val_fraction = 1.5", "val_fraction"),
    ("val_fraction = 0.5\ntest_fraction = 0.5", "val_fraction + test_fraction"),
    ("[optim]\nmax_lr = -1", "optim.max_lr"),
    ("[optim]\nmax_lr = nan", "optim.max_lr"),
    ("[optim]\nmax_lr = 1e-3\nbase_lr = 1e-2", "base_lr"),
    ("device = \"../x\"", "device"),
    ("seed = -1", "seed"),
    ("[augment]\ncontrast_limit = inf", "augment.contrast_limit"),
])
def test_teacher_config_bounds(tmp_path: Path, toml: str, field: str) -> None:
    from site_node.train_config import TeacherTrainConfig

    path = _write(tmp_path / "teacher.toml", toml + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, TeacherTrainConfig)
    assert str(err.value).startswith(f"{path}: ") and field in str(err.value)
    assert "\n" not in str(err.value)


def _experiment(tmp: Path, extra: str = "", site: str = "site_a", student: str = "") -> Path:
    return _write(tmp / "exp.toml", f'proxy = "p"\n{extra}\n[[sites]]\nname = "{site}"\n'
                  f'data = "d"\nteacher_dir = "t"\n[student]\n{student}\n')


@pytest.mark.parametrize(("student", "field"), [
    ("epochs = 0", "student.epochs"),
    ("batch_size = 0", "student.batch_size"),
    ("size = -32", "student.size"),
    ("max_lr = -1", "student.max_lr"),
    ("teacher_batch_size = 0", "student.teacher_batch_size"),
])
def test_student_config_bounds(tmp_path: Path, student: str, field: str) -> None:
    from coordinator.distill.config import ExperimentConfig

    load_config(_experiment(tmp_path), ExperimentConfig)  # the base config is valid
    path = _experiment(tmp_path, student=student)
    with pytest.raises(ConfigError, match=rf"exp\.toml: {field}: "):
        load_config(path, ExperimentConfig)


@pytest.mark.parametrize("site", ["../../x", ".hidden", "a/b", "x" * 65, "", "site a"])
def test_unsafe_site_name_is_refused(tmp_path: Path, site: str) -> None:
    from coordinator.distill.config import ExperimentConfig

    with pytest.raises(ConfigError, match=r"exp\.toml: sites\.0\.name: String should match"):
        load_config(_experiment(tmp_path, site=site), ExperimentConfig)


@pytest.mark.parametrize(("extra", "field"), [
    ('name = "../../escape"', "name"),
    ("seed = -1", "seed"),
    ("min_sites = 0", "min_sites"),
    ('[kd]\ntemperature = 0', "kd.temperature"),
    ('[runs]\nweightings = [{name = "fixed", kwargs = {nope = 1}}]', "runs.weightings.0"),
    ('[runs]\nweightings = [{name = "select_best", kwargs = {classes = "../x"}}]',
     "runs.weightings.0"),
])
def test_experiment_config_bounds(tmp_path: Path, extra: str, field: str) -> None:
    from coordinator.distill.config import ExperimentConfig

    with pytest.raises(ConfigError, match=rf"exp\.toml: {field}"):
        load_config(_experiment(tmp_path, extra=extra), ExperimentConfig)


def test_wire_configs_are_bounded() -> None:
    from pydantic import ValidationError

    from common.protocol import EvalConfig, QueryConfig, SiteInfo, TrainConfig

    TrainConfig(epochs=0, size=0)  # 0 = the site's defaults
    for bad in ({"epochs": -1}, {"size": -32}, {"size": 8}, {"run_id": "x" * 10_000},
                {"run_id": "../../x"}):
        with pytest.raises(ValidationError):
            TrainConfig.model_validate(bad)
    query = {"run_id": "1", "chunk": 0, "n_chunks": 1, "size": 64, "slice_hashes": []}
    QueryConfig.model_validate(query)
    for bad in ({"chunk": 1}, {"size": 0}, {"batch_size": 0}, {"p": 0}, {"run_id": "a/b"}):
        with pytest.raises(ValidationError):
            QueryConfig.model_validate({**query, **bad})
    with pytest.raises(ValidationError):
        SiteInfo(site_name="../../etc/passwd")
    with pytest.raises(ValidationError):
        EvalConfig(run_id="1", run_name="../x", model_name="enet", size=64)


# ----------------------------------------------------------------------------- data intake
def _msd(root: Path, n: int = 4, label_value: int = 1, listed: list[dict] | None = None) -> Path:
    """A tiny MSD folder: ``n`` cases of (4, 16, 16) with a cube of ``label_value``."""
    import json

    rng = np.random.default_rng(0)
    for i in range(n):
        save_nifti(root / "imagesTr" / f"c{i}.nii.gz", rng.normal(100, 20, (4, 16, 16)),
                   (2.0, 1.0, 1.0))
        lab = np.zeros((4, 16, 16), np.int16)
        lab[1:3, 4:10, 4:10] = label_value
        save_nifti(root / "labelsTr" / f"c{i}.nii.gz", lab, (2.0, 1.0, 1.0), np.int16)
    entries = listed if listed is not None else [
        {"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
        for i in range(n)]
    (root / "dataset.json").write_text(json.dumps({
        "name": "t", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "organ"},
        "training": entries}))
    return root


def _one_line_error(root: Path) -> str:
    from common.data.layout import discover_dataset

    with pytest.raises(DataError) as err:
        discover_dataset(root)
    msg = str(err.value)
    assert "\n" not in msg
    msg.encode("utf-8")  # printable: no surrogate escapes
    return msg


def test_duplicate_case_id_is_refused(tmp_path: Path) -> None:
    entry = {"image": "./imagesTr/c0.nii.gz", "label": "./labelsTr/c0.nii.gz"}
    root = _msd(tmp_path / "d", n=2, listed=[entry, {"image": "./imagesTr/c1.nii.gz",
                                                     "label": "./labelsTr/c1.nii.gz"}, entry])
    msg = _one_line_error(root)
    assert msg == f"{root / 'dataset.json'}: duplicate case id 'c0'"


def test_non_utf8_file_name_is_refused_at_discovery(tmp_path: Path) -> None:
    import os

    root = _msd(tmp_path / "d", n=2)
    (root / "dataset.json").unlink()  # nnU-Net v2 scan: every imagesTr file is a case
    for sub in ("imagesTr", "labelsTr"):
        for p in (root / sub).iterdir():
            p.rename(p.with_name(p.name.replace(".nii", "_0000.nii") if sub == "imagesTr"
                                 else p.name))
    bad = os.fsencode(root / "imagesTr") + b"/caf\xe9_0000.nii.gz"
    with open(bad, "wb") as fh:
        fh.write((root / "imagesTr" / "c0_0000.nii.gz").read_bytes())
    (root / "dataset.json").write_text('{"name": "t"}')
    msg = _one_line_error(root)
    assert msg == (f"{root / 'imagesTr'}: file name b'caf\\xe9_0000.nii.gz' is not valid "
                   "UTF-8; rename it")


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_case_files_outside_the_data_folder_are_refused(tmp_path: Path, how: str) -> None:
    outside = _msd(tmp_path / "other", n=1)
    secret = outside / "imagesTr" / "c0.nii.gz"
    root = _msd(tmp_path / "d", n=2)
    if how == "symlink":
        (root / "imagesTr" / "c1.nii.gz").unlink()
        (root / "imagesTr" / "c1.nii.gz").symlink_to(secret)
        victim = root / "imagesTr" / "c1.nii.gz"
    else:
        image = "../other/imagesTr/c0.nii.gz" if how == "dotdot" else str(secret)
        _msd(root, n=2, listed=[{"image": "./imagesTr/c0.nii.gz",
                                 "label": "./labelsTr/c0.nii.gz"},
                                {"image": image, "label": "./labelsTr/c1.nii.gz"}])
        victim = root / image
    msg = _one_line_error(root)
    assert msg.startswith(f"{victim}: resolves to {secret.resolve()}, outside the data folder")


def test_symlink_inside_the_folder_is_fine(tmp_path: Path) -> None:
    from common.data.layout import discover_dataset

    root = _msd(tmp_path / "d", n=2)
    target = root / "imagesTr" / "c1.nii.gz"
    moved = root / "store" / "c1.nii.gz"
    moved.parent.mkdir()
    target.rename(moved)
    target.symlink_to(moved)
    assert [c.case_id for c in discover_dataset(root).cases] == ["c0", "c1"]


def test_negative_label_values_are_refused(tmp_path: Path) -> None:
    from common.data.labels import select_target

    with pytest.raises(DataError, match=r"^lab\.nii\.gz: label values must be class indices "
                                        r">= 0, found -1$"):
        select_target(np.full((2, 3, 3), -1, np.int16), None, "lab.nii.gz")
    assert select_target(np.array([0, 2, 0]), None, "x").tolist() == [0, 1, 0]


@pytest.mark.parametrize("label_value", [0, -1])
def test_labels_without_a_positive_voxel_are_refused(tmp_path: Path, label_value: int) -> None:
    from site_node.train import prepare_data
    from tests._helpers import tiny_teacher_config

    root = _msd(tmp_path / "d", n=4, label_value=label_value)
    before = sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))
    with pytest.raises(DataError) as err:
        prepare_data(root, tiny_teacher_config(size=32), tmp_path / "teacher")
    msg = str(err.value)
    assert "\n" not in msg
    if label_value < 0:
        assert "label values must be class indices >= 0, found -1" in msg
    else:
        assert msg == f"{root}: no training label has a voxel of the target organ: nothing to learn"
    after = sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))
    assert after == before  # the data folder is never written to


@pytest.mark.parametrize("cmd", ["train", "check"])
def test_outputs_inside_the_data_folder_are_refused(tmp_path: Path, cmd: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from site_node.cli import main

    root = _msd(tmp_path / "d", n=4)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    out = root / ("teacher" if cmd == "train" else "fp.json")
    assert main([cmd, "--data", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"site-node: error: {out}: is inside the data folder {root}, which is never "
                   "written to; choose an output outside it")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


# ----------------------------------------------------------------------------- audit inputs
def _audit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from site_node.cli import main

    code = main(["audit", *argv])
    return code, capsys.readouterr().err.strip()


def test_audit_missing_log_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    log = tmp_path / "nope.jsonl"
    assert _audit(["--log", str(log)], capsys) == (
        2, f"site-node: error: {log}: log file not found")


def test_audit_wrong_key_files_are_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from common.audit.keys import generate_keypair, load_private_key
    from common.audit.log import AuditLog

    priv, pub = generate_keypair(tmp_path, "site")
    log = tmp_path / "egress.jsonl"
    AuditLog(log, load_private_key(priv)).append(run_id="1", peer="c", direction="in",
                                                 msg_type="train", decision="received")
    assert _audit(["--log", str(log), "--pub", str(pub)], capsys)[0] == 0
    rsa_pub = tmp_path / "rsa.pub"
    rsa_pub.write_bytes(rsa.generate_private_key(65537, 1024).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    cases = {priv: "not a PEM public key (a private key or another file?)",
             rsa_pub: "not an Ed25519 public key",
             tmp_path / "missing.pub": "cannot read public key (No such file or directory)"}
    for key, why in cases.items():
        assert _audit(["--log", str(log), "--pub", str(key)], capsys) == (
            2, f"site-node: error: {key}: {why}")


@pytest.mark.parametrize("argv", [
    ["predict", "--model", "{d}/no_teacher", "--in", "{d}", "--out", "{d}/masks"],
    ["predict", "--model", "{d}/no_teacher", "--in", "{d}", "--out", "{d}"],
    ["evaluate", "--pred", "{d}/../pred", "--labels", "{d}", "--out", "{d}/eval"],
    ["evaluate", "--pred", "{d}", "--labels", "{d}"],
])
def test_predict_and_evaluate_never_write_into_their_input(
        tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from site_node.cli import main

    data = tmp_path / "data"
    save_nifti(data / "c0.nii.gz", np.ones((2, 4, 4)), (1.0, 1.0, 1.0))
    (tmp_path / "pred").mkdir()
    args = [a.format(d=data) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is inside the data folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in data.iterdir()) == ["c0.nii.gz"]


# ----------------------------------------------------------------------------- CLI overrides
def test_cli_overrides_are_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.cli import main as coordinator_main
    from site_node.cli import main as site_main

    root = _msd(tmp_path / "d", n=4)
    out = tmp_path / "teacher"
    assert site_main(["train", "--data", str(root), "--out", str(out), "--epochs", "0"]) == 2
    assert not out.exists()  # refused before anything is written (no teacher.json)
    assert site_main(["train", "--data", str(root), "--out", str(out), "--batch-size", "0"]) == 2
    assert site_main(["make-phantom", "--site-style", "A", "--out", str(tmp_path / "ph"),
                      "--cases", "-3"]) == 2
    exp = _experiment(tmp_path)
    assert coordinator_main(["distill", "--local", "--config", str(exp), "--epochs", "0"]) == 2
    assert coordinator_main(["make-proxy", "--out", str(tmp_path / "px"), "--depth", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "site-node: error: --epochs: Input should be greater than or equal to 1",
        "site-node: error: --batch_size: Input should be greater than or equal to 1",
        "site-node: error: make-phantom: n_cases: Input should be greater than or equal to 1",
        "coordinator: error: --epochs: epochs: Input should be greater than or equal to 1",
        "coordinator: error: make-proxy: shape: Value error, shape sides must be 4..1024, "
        "got (0, 96, 96)",
    ]
    assert not (tmp_path / "ph").exists() and not (tmp_path / "px").exists()


def test_predict_refuses_non_utf8_image_names(tmp_path: Path) -> None:
    import os

    from common.inference.predict import list_images

    images = tmp_path / "in"
    save_nifti(images / "ok.nii.gz", np.ones((2, 4, 4)), (1.0, 1.0, 1.0))
    with open(os.fsencode(images) + b"/x\xff.nii.gz", "wb") as fh:
        fh.write((images / "ok.nii.gz").read_bytes())
    with pytest.raises(DataError) as err:
        list_images(images)
    assert str(err.value) == f"{images}: file name b'x\\xff.nii.gz' is not valid UTF-8; rename it"
