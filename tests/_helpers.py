"""Plain helpers shared by the tests (fixtures live in ``tests/conftest.py``).

Import them as ``from tests._helpers import ...``; nothing here trains or touches the network.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.kd.targets import TeacherTargets
    from site_node.train_config import TeacherTrainConfig

SITES = ("site_a", "site_b", "site_c")
"""The three tiny phantom sites of ``tiny_sites`` (styles A, B, C)."""

NO_AUGMENT = {f"{k}_p": 0.0 for k in ("shift_scale_rotate", "hflip", "vflip", "elastic",
                                      "grid_distortion", "optical_distortion",
                                      "brightness_contrast", "coarse_dropout")}
"""A ``[student.augment]`` table with every augmentation off."""


def tiny_teacher_config(**kw: object) -> TeacherTrainConfig:
    """A fast TeacherTrainConfig for CPU tests: tiny_unet at 64 px, 1 epoch, updated by ``kw``."""
    from site_node.train_config import OptimConfig, TeacherTrainConfig

    base: dict[str, Any] = dict(model="tiny_unet", size=64, epochs=1, batch_size=8, patience=20,
                                device="cpu", skip_empty_fraction=0.6,
                                optim=OptimConfig(max_lr=0.005, base_lr=1e-5, step_size_up=100))
    base.update(kw)
    return TeacherTrainConfig.model_validate(base)


QUICK_TEACHER = dict(size=32, epochs=1, max_steps_per_epoch=2)
"""``tiny_teacher_config`` overrides of the barely trained teachers (``tiny_teachers``)."""


def corrupted_copy(src: Path, dst: Path, folder: str, index: int, content: bytes) -> Path:
    """Copy dataset ``src`` to ``dst`` and overwrite its ``index``-th ``folder/*.nii*`` file
    (sorted) with ``content``; the corrupted file's path."""
    shutil.copytree(src, dst)
    victim = sorted((dst / folder).glob("*.nii*"))[index]
    victim.write_bytes(content)
    return victim


def experiment_toml(tmp: Path, name: str, proxy: Path, sites: dict[str, tuple[Path, Path]],
                    student: dict[str, Any] | None = None, **top: Any) -> Path:
    """Write ``tmp/exp.toml``: a 1-epoch 32 px enet student distilled with ``inverse_dice_loss``
    from ``sites`` (name -> (data dir, teacher dir)), results under ``tmp/exp``.

    ``student`` adds keys (or tables) to ``[student]``; ``top`` adds top-level keys or tables.
    """
    import tomli_w

    doc: dict[str, Any] = {
        "name": name, "out": str(tmp / "exp"), "proxy": str(proxy), **top,
        "sites": [{"name": n, "data": str(d), "teacher_dir": str(t)}
                  for n, (d, t) in sites.items()],
        "student": {"model": "enet", "size": 32, "epochs": 1, "batch_size": 16,
                    "device": "cpu", "step_size_up": 20, **(student or {})},
        "runs": {"baseline": False, "single_teacher": False,
                 "weightings": [{"name": "inverse_dice_loss"}]},
    }
    path = tmp / "exp.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def federated_toml(sites: dict[str, Path], teachers: dict[str, Path], tmp: Path) -> Path:
    """``experiment_toml`` for the three ``SITES`` (data ``sites[n]``, teacher ``teachers[n]``,
    proxy ``sites["proxy"]``), augmentation off: the federated end-to-end experiment."""
    return experiment_toml(tmp, "fed", sites["proxy"],
                           {n: (sites[n], teachers[n]) for n in SITES},
                           student={"augment": NO_AUGMENT})


def random_targets(n: int, side: int, j: int = 1, seed: int = 0) -> TeacherTargets:
    """Seeded random outputs of ``j`` teachers on ``n`` slices of ``side`` px: logits
    ``(j,n,2,side,side)``, attention maps ``(j,n,side/2,side/2)`` and ``(j,n,side/8,side/8)``
    (at least 1x1), region-contrast scores ``(j,n)``; all in [0, 1) but the logits."""
    import torch

    from common.kd.targets import TeacherTargets

    g = torch.Generator().manual_seed(seed)
    deep = max(1, side // 8)
    return TeacherTargets(logits=torch.randn(j, n, 2, side, side, generator=g),
                          at_early=torch.rand(j, n, side // 2, side // 2, generator=g),
                          at_deep=torch.rand(j, n, deep, deep, generator=g),
                          rc_early=torch.rand(j, n, generator=g),
                          rc_deep=torch.rand(j, n, generator=g))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (audit logs, ``runs.jsonl``), in order."""
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def fedavg_site_context(sites: dict, teachers: dict, tmp: Path, name: str, allow: bool) -> Any:
    """A Flower ``Context`` for site ``name``'s real ClientApp: a copy of its teacher, its own
    state folder and a policy file with ``weight_release.allow = allow``."""
    import json

    from flwr.app import Context, RecordDict

    from site_node.policy import default_policy

    shutil.copytree(teachers[name], tmp / name / "teacher")
    pol = default_policy()
    pol.weight_release.allow = allow
    (tmp / name / "policy.yaml").write_text(json.dumps(pol.model_dump()))  # JSON is YAML
    conf = {"data-path": str(sites[name]), "teacher-dir": str(tmp / name / "teacher"),
            "site-name": name, "state-dir": str(tmp / name / "state"),
            "policy-path": str(tmp / name / "policy.yaml")}
    return Context(run_id=1, node_id=1, node_config=conf, state=RecordDict(), run_config={})


class PushPullGrid:
    """``push_messages``/``pull_messages`` of a Flower Grid on top of a test grid's synchronous
    ``send_and_receive`` (each reply tagged with the id its request was given)."""

    def push_messages(self, msgs: Any) -> list[str]:
        msgs = list(msgs)
        replies = list(self.send_and_receive(msgs))  # type: ignore[attr-defined]
        assert len(replies) == len(msgs), "one reply per message, in order"
        store = self.__dict__.setdefault("_ready", {})
        ids = []
        for m, r in zip(msgs, replies, strict=True):
            mid = f"m{len(store) + len(ids)}-{id(m)}"
            ids.append(mid)
            r.metadata.__dict__["_reply_to_message_id"] = mid
            store[mid] = r
        return ids

    def pull_messages(self, ids: Any) -> list[Any]:
        store = self.__dict__.setdefault("_ready", {})
        return [store.pop(i) for i in list(ids) if i in store]


def count_nifti_reads(monkeypatch: Any) -> Counter[Path]:
    """Count :func:`common.data.nifti.read_nifti` calls per path, also through every module of
    ``common``, ``site_node`` and ``coordinator`` that imported the function by name (so no
    caller can read around the count); ``monkeypatch`` undoes it after the test."""
    import sys

    import common.data.nifti as nifti

    original, counts = nifti.read_nifti, Counter[Path]()

    def counting(path: Path | str, *args: object, **kwargs: object) -> nifti.NiftiFile:
        counts[Path(path)] += 1
        return original(path, *args, **kwargs)  # type: ignore[arg-type]

    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "") or ""
        if name.split(".")[0] in ("common", "site_node", "coordinator") and \
                getattr(module, "read_nifti", None) is original:
            monkeypatch.setattr(module, "read_nifti", counting)
    return counts
