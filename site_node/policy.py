"""Egress policy: what a site lets leave, checked on every reply before it is sent.

A policy lists, per message type, the array names that may leave with their allowed dtypes and
shapes, a byte budget for the reply, and the scalar keys (config/metrics) it may carry. Shapes
are written relative to the request::

    shape = ["n", 2, "side", "side"]   # "n" = slices in the request, "side" = its image side,
    shape = ["n", "side/2", "side/2"]  # "side/k" = side // k, an int = that exact size

and the request itself is bounded (``n <= max_slices_per_query``, ``side <= max_side``). A train
or evaluate reply has no array rules, so any array (e.g. weights) is refused. Queries are further
limited per run (``min_query_batch``, ``max_queries_per_run``, ``max_slices_per_run``) and per
coordinator identity over a rolling window or a lifetime (``[coordinator_budget]``) by
:class:`site_node.budget.QueryBudget`, the model-extraction limit; the whole request is checked
(:func:`check_request`) before any teacher work. Load with
``common.config.load_config(path, EgressPolicy)``; ``deploy/egress-policy.toml`` is the default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import numpy as np
from pydantic import Field

from common.config import StrictModel
from common.protocol.messages import MAX_QUERY_SIDE, MAX_QUERY_SLICES

Dim = int | Annotated[str, Field(pattern=r"^(n|side(/[1-9][0-9]*)?)$")]


class Decision(NamedTuple):
    """Outcome of a policy check: ``allowed`` or the one-line ``reason`` it was refused."""

    allowed: bool
    reason: str | None = None


ALLOW = Decision(True, None)


class ArrayRule(StrictModel):
    """One array name that may leave: allowed dtypes and a shape relative to the request."""

    dtypes: list[str]
    shape: list[Dim]


class ReplyRule(StrictModel):
    """What the reply to one message type may carry."""

    arrays: dict[str, ArrayRule] = Field(default_factory=dict)
    metric_keys: list[str] = Field(default_factory=list)
    max_reply_bytes: int = Field(default=0, ge=0)
    #: scores that may leave per test case, as scalars ``caseNNN.<key>`` (NNN: the case's index
    #: in the test split, never its file name; ``common.protocol.EvalReply.cases``)
    case_metric_keys: list[str] = Field(default_factory=list)


class RemoteTrainPolicy(StrictModel):
    """What a coordinator's ``train`` request may decide about this site's teacher (default:
    nothing). An override outside these bounds is ignored (the site's own value is used); a
    remote retrain never overwrites a teacher, it writes a new version
    (:mod:`site_node.teacher_versions`) that serves only once the site switches to it."""

    allow_retrain: bool = False  # honour force_retrain when a teacher already serves
    models: list[str] = Field(default_factory=list, max_length=64)  # model overrides allowed
    max_epochs: int = Field(default=0, ge=0, le=100_000)  # epochs override 1..max (0: none)
    min_size: int = Field(default=16, ge=16, le=1024)
    max_size: int = Field(default=0, ge=0, le=1024)  # size override min..max (0: none)


class MembershipPolicy(StrictModel):
    """Membership guard (:mod:`site_node.membership`): a query holding one of the site's own
    slices (same prepared bytes, or a ``resolution``-px correlation >= ``max_correlation``)
    is refused before the teacher runs."""

    enabled: bool = True
    max_correlation: float = Field(default=0.96, gt=0.0, le=1.0)
    resolution: int = Field(default=16, ge=4, le=64)


class WeightReleasePolicy(StrictModel):
    """FedAvg baseline (:mod:`site_node.fedavg`): a ``query.fedavg_train`` reply
    releases model weights trained on this site's data. Refused unless ``allow``."""

    allow: bool = False
    max_reply_bytes: int = Field(default=200_000_000, ge=0)


#: The message type whose reply releases model weights (FedAvg baseline runs only).
WEIGHT_RELEASE_TYPE = "query.fedavg_train"
WEIGHT_RELEASE_KEYS = ["site_name", "release", "num-examples", "train-loss"]


class CoordinatorBudgetPolicy(StrictModel):
    """Queries and slices one coordinator identity may have answered, across all its runs and
    the site's restarts (:mod:`site_node.budget`): within any ``window_hours`` (0: ever)."""

    window_hours: float = Field(default=24.0, ge=0.0, le=24.0 * 366 * 10)
    max_queries: int = Field(default=5_000, ge=1)
    max_slices: int = Field(default=500_000, ge=1)


class ReplayPolicy(StrictModel):
    """Replay rule (:mod:`site_node.replay`): every request's coordinator log head must be
    newer than the last one of its signer, and a request is answered at most once.
    ``require_head``: refuse requests without a signed head (unset: required exactly when
    the coordinator's key is pinned, node config ``coordinator-key``)."""

    require_head: bool | None = None


class EgressPolicy(StrictModel):
    """The site's egress policy (see the module docstring)."""

    max_slices_per_query: int = Field(default=256, ge=1, le=MAX_QUERY_SLICES)
    max_side: int = Field(default=384, ge=16, le=MAX_QUERY_SIDE)
    min_query_batch: int = Field(default=8, ge=1)
    max_queries_per_run: int = Field(default=1000, ge=1)
    max_slices_per_run: int = Field(default=100_000, ge=1)
    max_str_len: int = Field(default=128, ge=1)
    replies: dict[str, ReplyRule]
    remote_train: RemoteTrainPolicy = RemoteTrainPolicy()
    membership: MembershipPolicy = MembershipPolicy()
    weight_release: WeightReleasePolicy = WeightReleasePolicy()
    coordinator_budget: CoordinatorBudgetPolicy = CoordinatorBudgetPolicy()
    replay: ReplayPolicy = ReplayPolicy()


#: Scalars of a query reply saying how its logits are encoded (``common.protocol.QueryEcho``).
CODEC_KEYS = ["compression", "downsample_factor", "int8_classes", "temperature", "noise_sigma",
              "noise_on", "at_form"]


#: The teacher plan's aggregate facts of a train reply (``common.protocol.TrainReply``).
PLAN_KEYS = ["plan_spacing_y", "plan_spacing_x", "plan_size", "plan_norm"]


def default_policy() -> EgressPolicy:
    """The policy matching ``common.protocol``: teacher outputs on queries, metrics otherwise."""
    f16, f32 = ["float16"], ["float32"]
    query = ReplyRule(
        arrays={"logits": ArrayRule(dtypes=f16, shape=["n", 2, "side", "side"]),
                "probs_u8": ArrayRule(dtypes=["uint8"], shape=["n", 1, "side", "side"]),
                "logits_ds": ArrayRule(dtypes=f16, shape=["n", 2, "side/2", "side/2"]),
                "at_early": ArrayRule(dtypes=f16, shape=["n", "side/2", "side/2"]),
                "at_deep": ArrayRule(dtypes=f16, shape=["n", "side/8", "side/8"]),
                "rc_early": ArrayRule(dtypes=f32, shape=["n"]),
                "rc_deep": ArrayRule(dtypes=f32, shape=["n"])},
        metric_keys=["site_name", "run_id", "chunk", "n", *CODEC_KEYS],
        max_reply_bytes=180_000_000)
    evaluate = ReplyRule(metric_keys=["site_name", "dice_mean", "dice_std", "voe_mean",
                                      "voe_std", "hd95_mean", "hd95_std", "hd95_undefined", "n"],
                         case_metric_keys=["dice", "voe", "hd95"])
    return EgressPolicy(replies={
        "train": ReplyRule(metric_keys=["val_dice", "case_count", "site_name", *PLAN_KEYS]),
        "query.teacher_outputs": query, "evaluate": evaluate})


def load_policy(path: Path | None) -> EgressPolicy:
    """The policy file at ``path`` (node config ``policy-path``), else :func:`default_policy`."""
    from common.config import load_config

    return load_config(path, EgressPolicy) if path is not None else default_policy()


def allowed_arrays(policy: EgressPolicy) -> dict[str, frozenset[str]]:
    """Array names ``policy`` lets leave, per message type (what ``site-node audit`` checks a
    log against; the default policy allows every compression mode's logits array)."""
    return {t: frozenset(rule.arrays) for t, rule in policy.replies.items()}


def release_caps(policy: EgressPolicy) -> dict[str, int]:
    """Message types whose replies ``policy`` lets release other arrays (model weights), with
    the byte cap per reply: what ``site-node audit`` reports as released under policy."""
    rule = policy.weight_release
    return {WEIGHT_RELEASE_TYPE: rule.max_reply_bytes} if rule.allow else {}


# ----------------------------------------------------------------------------- reply checks
def expected_shape(rule: ArrayRule, n: int | None, side: int | None) -> tuple[int, ...] | str:
    """The exact shape ``rule`` allows for a request of ``n`` slices of ``side``, or why not."""
    dims: list[int] = []
    for d in rule.shape:
        if isinstance(d, int):
            dims.append(d)
        elif d == "n":
            if n is None:
                return "shape depends on the request's N, which is unknown"
            dims.append(n)
        else:
            if side is None:
                return "shape depends on the request's side, which is unknown"
            dims.append(side // int(d.split("/")[1]) if "/" in d else side)
    return tuple(dims)


def _check_array(name: str, arr: np.ndarray, rule: ArrayRule, n: int | None,
                 side: int | None) -> str | None:
    if str(arr.dtype) not in rule.dtypes:
        return f"array {name!r}: dtype {arr.dtype} not allowed (allowed {rule.dtypes})"
    want = expected_shape(rule, n, side)
    if isinstance(want, str):
        return f"array {name!r}: {want}"
    if tuple(arr.shape) != want:
        return f"array {name!r}: shape {tuple(arr.shape)}, allowed {want}"
    return None


def _check_request(policy: EgressPolicy, n: int | None, side: int | None) -> str | None:
    if n is not None and not 1 <= n <= policy.max_slices_per_query:
        return f"request N={n} outside 1..{policy.max_slices_per_query}"
    if side is not None and not 1 <= side <= policy.max_side:
        return f"request side {side} outside 1..{policy.max_side}"
    return None


def _query_arrays(arrays: Mapping[str, np.ndarray], n: int, side: int) -> str | None:
    """The request arrays of a query of ``n`` slices of ``side``: exactly the wire schema's."""
    from common.protocol.schemas import query_schema

    want = query_schema(n, side)
    if set(arrays) != set(want):
        return f"request arrays {sorted(arrays)}, expected {sorted(want)}"
    for name, (dtype, shape) in want.items():
        arr = arrays[name]
        if str(arr.dtype) != dtype or tuple(arr.shape) != shape:
            return (f"request array {name!r}: {arr.dtype} {tuple(arr.shape)}, expected "
                    f"{dtype} {shape}")
    return None


def check_request(policy: EgressPolicy, msg_type: str, arrays: Mapping[str, np.ndarray],
                  n: int | None, side: int | None) -> Decision:
    """The whole request against the policy, before any work: a message type with a reply
    rule; a query's slice count ``n`` (``min_query_batch..max_slices_per_query``), side
    (``<= max_side``) and arrays (dtypes and shapes of the wire schema); a weight release
    only when ``weight_release.allow``. Budgets are charged separately (``site_node.budget``)."""
    t = str(msg_type)
    if t == WEIGHT_RELEASE_TYPE:
        return ALLOW if policy.weight_release.allow else Decision(
            False, f"{t}: this site's policy releases no model weights "
                   "(weight_release.allow = false)")
    if t not in policy.replies:
        return Decision(False, f"{t}: no egress rule for this message type")
    if n is None:
        return ALLOW
    why = None
    if n < policy.min_query_batch:
        why = f"query of {n} slices < min_query_batch {policy.min_query_batch}"
    why = why or _check_request(policy, n, side)
    if why is None and side is None:
        why = "request side (config size) missing or not an integer"
    why = why or _query_arrays(arrays, n, int(side or 0))
    return Decision(False, f"{t}: {why}") if why else ALLOW


def _case_metric(rule: ReplyRule, key: str) -> bool:
    """``key`` is a per-test-case score ``caseNNN.<m>`` with ``m`` in ``case_metric_keys``."""
    m = re.fullmatch(r"case[0-9]{3,5}\.([a-z0-9_]+)", key)
    return m is not None and m.group(1) in rule.case_metric_keys


def _check_metrics(policy: EgressPolicy, rule: ReplyRule, metrics: Mapping[str, Any]) -> str | None:
    for key, value in metrics.items():
        if key not in rule.metric_keys and not _case_metric(rule, key):
            return f"metric {key!r} not allowed (allowed {rule.metric_keys})"
        if not isinstance(value, str | int | float | bool):
            return f"metric {key!r}: only scalars may leave, got {type(value).__name__}"
        if isinstance(value, str) and len(value) > policy.max_str_len:
            return f"metric {key!r}: string of {len(value)} chars > {policy.max_str_len}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"metric {key!r}: non-finite value"
    return None


def _check_arrays(rule: ReplyRule, msg_type: str, arrays: Mapping[str, np.ndarray],
                  n: int | None, side: int | None) -> str | None:
    for name, arr in arrays.items():
        if name not in rule.arrays:
            if not rule.arrays:
                return f"a {msg_type} reply may not carry arrays (got {name!r})"
            return f"array {name!r} not allowed (allowed {sorted(rule.arrays)})"
        why = _check_array(name, np.asarray(arr), rule.arrays[name], n, side)
        if why:
            return why
    total = sum(int(np.asarray(a).nbytes) for a in arrays.values())
    if arrays and total > rule.max_reply_bytes:
        return f"reply arrays total {total} B > budget {rule.max_reply_bytes} B"
    return None


def check_reply(policy: EgressPolicy, msg_type: str, arrays: Mapping[str, np.ndarray],
                metrics: Mapping[str, Any], request_n: int | None = None,
                request_side: int | None = None) -> Decision:
    """Allow or refuse a reply. ``metrics`` = every scalar in the reply's config/metric records."""
    if str(msg_type) == WEIGHT_RELEASE_TYPE:
        return check_weight_release(policy, arrays, metrics)
    rule = policy.replies.get(str(msg_type))
    if rule is None:
        return Decision(False, f"{msg_type}: no egress rule for this message type")
    why = (_check_request(policy, request_n, request_side)
           or _check_arrays(rule, str(msg_type), arrays, request_n, request_side)
           or _check_metrics(policy, rule, metrics))
    return Decision(False, f"{msg_type}: {why}") if why else ALLOW


def check_weight_release(policy: EgressPolicy, arrays: Mapping[str, np.ndarray],
                         metrics: Mapping[str, Any]) -> Decision:
    """A FedAvg reply (model weights): refused unless ``weight_release.allow``; then only
    finite float arrays within ``max_reply_bytes`` and the :data:`WEIGHT_RELEASE_KEYS`."""
    rule, t = policy.weight_release, WEIGHT_RELEASE_TYPE
    if not rule.allow:
        return Decision(False, f"{t}: this site's policy releases no model weights "
                               "(weight_release.allow = false)")
    total = sum(int(np.asarray(a).nbytes) for a in arrays.values())
    if total > rule.max_reply_bytes:
        return Decision(False, f"{t}: weights total {total} B > budget {rule.max_reply_bytes} B")
    why = _check_metrics(policy, ReplyRule(metric_keys=WEIGHT_RELEASE_KEYS), metrics)
    return Decision(False, f"{t}: {why}") if why else ALLOW


# ----------------------------------------------------------------------------- display
def _format_rule(msg_type: str, rule: ReplyRule) -> list[str]:
    lines = [f"reply to {msg_type!r}:"]
    if not rule.arrays:
        lines.append("  arrays: NONE (any array is refused)")
    for name, a in rule.arrays.items():
        shape = "(" + ", ".join(str(d) for d in a.shape) + ")"
        lines.append(f"  array {name:<10} {'|'.join(a.dtypes):<8} shape {shape}")
    if rule.arrays:
        lines.append(f"  byte budget per reply: {rule.max_reply_bytes:,} B")
    lines.append(f"  scalar keys: {', '.join(rule.metric_keys) or '(none)'}")
    if rule.case_metric_keys:
        lines.append(f"  per test case (caseNNN.<key>): {', '.join(rule.case_metric_keys)}")
    return lines


def format_policy(policy: EgressPolicy) -> str:
    """Human-readable policy, for ``site-node policy show``."""
    p = policy
    lines = ["Egress policy (anything not listed is refused)",
             f"query limits: {p.min_query_batch} <= N <= {p.max_slices_per_query} slices, "
             f"side <= {p.max_side}",
             f"per run: <= {p.max_queries_per_run} queries, <= {p.max_slices_per_run} slices",
             f"scalar strings: <= {p.max_str_len} chars",
             f"remote train: retrain {'allowed' if p.remote_train.allow_retrain else 'refused'}"
             f" (new version, served only when the site switches); overrides: models "
             f"{p.remote_train.models or 'none'}, epochs <= {p.remote_train.max_epochs}, size "
             f"{p.remote_train.min_size}..{p.remote_train.max_size} (0: none)",
             f"membership guard: {'on' if p.membership.enabled else 'OFF'}, refuse at "
             f"correlation >= {p.membership.max_correlation} at {2 * p.membership.resolution} px "
             "(flips, rotations, shifts, crops tried)",
             f"per coordinator identity: <= {p.coordinator_budget.max_queries} queries, <= "
             f"{p.coordinator_budget.max_slices} slices "
             + (f"in any {p.coordinator_budget.window_hours:g} h"
                if p.coordinator_budget.window_hours > 0 else "over the site's lifetime"),
             "replay: coordinator heads strictly increasing, each request answered once; "
             "head required: " + {None: "when a coordinator key is pinned", True: "always",
                                  False: "never"}[p.replay.require_head],
             f"model weights ({WEIGHT_RELEASE_TYPE}, FedAvg baseline): "
             + (f"RELEASED, <= {p.weight_release.max_reply_bytes} B per reply"
                if p.weight_release.allow else "refused"),
             ""]
    for msg_type, rule in p.replies.items():
        lines += _format_rule(msg_type, rule) + [""]
    return "\n".join(lines).rstrip() + "\n"
