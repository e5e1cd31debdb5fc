"""FedBN (Li et al. 2021) at a site: its BatchNorm layers never leave it.

A FedBN round's request carries every weight of the student except the BatchNorm layers'
(``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked`` of every
``torch.nn`` BatchNorm module: :func:`bn_keys`); the site completes it with its own BatchNorm
state (:func:`with_site_bn`), trains (:func:`common.fedavg_local.local_update`), keeps the new
BatchNorm state (:func:`keep_site_bn`) and answers the rest. The site's test cases are scored
with the final shared weights and its own BatchNorm (:func:`load_site_bn`).

Where a site keeps it: ``<state dir>/fedbn/<run id>/seed<seed>.pt``, one file per run and seed,
because a Flower ClientApp is a fresh process per message; the coordinator's ``--local``
stand-in keeps the same file under each site's folder of the run. Round 1 always starts from
the architecture's own BatchNorm initialisation (never a file left by an earlier run), so a
rerun of the same run id trains the same model.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch
from torch import nn

from common.config import safe_run_name

_KW = {"in_channels": 1, "num_classes": 2}


def bn_keys_of(model: nn.Module) -> frozenset[str]:
    """The ``state_dict`` keys of every BatchNorm module of ``model`` (parameters and running
    statistics), e.g. ``stem.1.weight``, ``stem.1.running_var``."""
    out: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            out.update(f"{name}.{k}" if name else k for k in mod.state_dict())
    return frozenset(out)


@cache
def bn_keys(model_name: str) -> frozenset[str]:
    """:func:`bn_keys_of` the registered model ``model_name`` (1 input channel, 2 classes)."""
    from common.models import build_model

    with torch.random.fork_rng(devices=[]):
        return bn_keys_of(build_model(model_name, **_KW))


def without_bn(state: dict[str, torch.Tensor], model_name: str) -> dict[str, torch.Tensor]:
    """``state`` less its BatchNorm entries: what a FedBN message carries."""
    keys = bn_keys(model_name)
    return {k: v for k, v in state.items() if k not in keys}


def initial_bn(model_name: str) -> dict[str, torch.Tensor]:
    """The architecture's own initial BatchNorm state (constant: ones, zeros, a zero count;
    built under a fixed seed and without touching torch's global generator)."""
    from common.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = build_model(model_name, **_KW).state_dict()
    return {k: v.detach().clone() for k, v in state.items() if k in bn_keys(model_name)}


def bn_path(state_dir: Path, run_id: str, seed: int) -> Path:
    """Where a site keeps its FedBN BatchNorm state for ``run_id`` and ``seed`` (ValueError
    for a run id that is not a safe folder name)."""
    return state_dir / "fedbn" / safe_run_name(run_id or "local") / f"seed{int(seed)}.pt"


def load_site_bn(state_dir: Path, run_id: str, seed: int) -> dict[str, torch.Tensor]:
    """The site's kept BatchNorm state (FileNotFoundError, one line, when it has none: it
    trained no FedBN round of this run)."""
    path = bn_path(state_dir, run_id, seed)
    if not path.is_file():
        raise FileNotFoundError(f"no FedBN BatchNorm state for run {run_id!r} seed {seed} "
                                "(this site trained no FedBN round of it)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {str(k): v for k, v in state.items()}


def with_site_bn(shared: dict[str, torch.Tensor], model_name: str, state_dir: Path,
                 run_id: str, seed: int, server_round: int) -> dict[str, torch.Tensor]:
    """The full ``state_dict`` a site trains in a FedBN round: the ``shared`` weights of the
    request plus its own BatchNorm state (round 1, or a site's first round: the initial one)."""
    path = bn_path(state_dir, run_id, seed)
    own = (load_site_bn(state_dir, run_id, seed) if server_round > 1 and path.is_file()
           else initial_bn(model_name))
    return {**shared, **own}


def keep_site_bn(state: dict[str, torch.Tensor], model_name: str, state_dir: Path,
                 run_id: str, seed: int) -> dict[str, torch.Tensor]:
    """Write ``state``'s BatchNorm entries to the site's file (atomically) and return the rest:
    what the reply carries."""
    keys = bn_keys(model_name)
    path = bn_path(state_dir, run_id, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().cpu() for k, v in state.items() if k in keys}, tmp)
    os.replace(tmp, path)
    return {k: v for k, v in state.items() if k not in keys}
