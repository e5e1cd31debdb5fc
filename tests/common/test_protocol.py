"""Wire schema: round trips and refusal of anything off-schema (keys, dtypes, shapes, weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from common.protocol import (
    EvalConfig,
    EvalReply,
    Key,
    MsgType,
    ProtocolError,
    QueryConfig,
    TrainConfig,
    TrainReply,
    decode_eval,
    decode_eval_reply,
    decode_query,
    decode_teacher_reply,
    decode_train,
    decode_train_reply,
    encode_eval,
    encode_eval_reply,
    encode_query,
    encode_teacher_reply,
    encode_train,
    encode_train_reply,
    slice_hash,
)
from tests._helpers import random_targets

N, S = 3, 16


def _proxy() -> tuple[np.ndarray, np.ndarray, QueryConfig]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(N, 1, S, S)).astype(np.float32)
    masks = (rng.random((N, S, S)) > 0.5).astype(np.uint8)
    cfg = QueryConfig(run_id="r1", chunk=0, n_chunks=1, size=S,
                      slice_hashes=[slice_hash(i) for i in images])
    return images, masks, cfg


def test_message_types_are_the_flower_ones() -> None:
    assert MsgType.QUERY == "query.teacher_outputs" and MsgType.TRAIN == "train"
    assert str(Key.LOGITS) == "logits"


def test_query_round_trip_checks_hashes() -> None:
    images, masks, cfg = _proxy()
    rd = encode_query(images, masks, cfg)
    cfg2, im2, m2 = decode_query(rd)
    assert cfg2 == cfg and np.array_equal(im2, images) and np.array_equal(m2, masks)
    assert im2.dtype == np.float32 and m2.dtype == np.uint8
    bad = cfg.model_copy(update={"slice_hashes": cfg.slice_hashes[::-1]})
    with pytest.raises(ProtocolError, match="slice_hashes"):
        decode_query(encode_query(images, masks, bad))


def test_teacher_reply_round_trip_fp16() -> None:
    _, _, cfg = _proxy()
    t = random_targets(N, S)
    rd = encode_teacher_reply("site_a", cfg, t)
    assert rd[Key.ARRAYS][Key.LOGITS].dtype == "float16"
    assert rd[Key.ARRAYS][Key.RC_EARLY].dtype == "float32"
    site, back = decode_teacher_reply(rd, N, S, "node 1", chunk=0)
    assert site == "site_a" and back.logits.shape == (1, N, 2, S, S)
    assert back.logits.dtype == torch.float32
    assert torch.allclose(back.logits, t.logits, atol=1e-2)
    assert torch.equal(back.rc_deep, t.rc_deep)


def test_reply_with_extra_key_is_refused() -> None:
    _, _, cfg = _proxy()
    rd = encode_teacher_reply("site_a", cfg, random_targets(N, S))
    rd[Key.ARRAYS]["features"] = Array(np.zeros((N, 8), dtype=np.float16))
    with pytest.raises(ProtocolError, match=r"node 7 \(site_a\).*unexpected \['features'\]"):
        decode_teacher_reply(rd, N, S, "node 7")
    rd2 = encode_teacher_reply("site_a", cfg, random_targets(N, S))
    rd2["extra"] = ConfigRecord({"x": 1})
    with pytest.raises(ProtocolError, match="unexpected \\['extra'\\]"):
        decode_teacher_reply(rd2, N, S, "node 7")


def test_reply_with_wrong_shape_or_dtype_or_nan_is_refused() -> None:
    _, _, cfg = _proxy()
    rd = encode_teacher_reply("site_a", cfg, random_targets(N, S))
    rd[Key.ARRAYS][Key.AT_DEEP] = Array(np.zeros((N, S // 4, S // 4), dtype=np.float16))
    with pytest.raises(ProtocolError, match="'at_deep': shape"):
        decode_teacher_reply(rd, N, S, "node 7")
    rd = encode_teacher_reply("site_a", cfg, random_targets(N, S))
    rd[Key.ARRAYS][Key.LOGITS] = Array(np.zeros((N, 2, S, S), dtype=np.float32))
    with pytest.raises(ProtocolError, match="'logits': dtype float32, expected float16"):
        decode_teacher_reply(rd, N, S, "node 7")
    t = random_targets(N, S)
    t.rc_early[0, 1] = float("nan")
    with pytest.raises(ProtocolError, match="'rc_early': non-finite"):
        decode_teacher_reply(encode_teacher_reply("site_a", cfg, t), N, S, "node 7")
    with pytest.raises(ProtocolError, match="expected chunk 0 with 5"):
        decode_teacher_reply(encode_teacher_reply("site_a", cfg, random_targets(N, S)), 5, S,
                             "n", 0)


def test_query_with_wrong_dtype_is_refused_by_the_site() -> None:
    images, masks, cfg = _proxy()
    rd = encode_query(images, masks, cfg)
    rd[Key.ARRAYS][Key.MASKS] = Array(masks.astype(np.int64))
    with pytest.raises(ProtocolError, match="coordinator: array 'masks': dtype int64"):
        decode_query(rd)
    with pytest.raises(ProtocolError, match="shape"):
        encode_query(images[:, :, :8], masks, cfg)


def test_train_round_trip_and_weights_in_a_train_reply_are_refused() -> None:
    assert decode_train(encode_train(TrainConfig(run_id="x", force_retrain=True))).force_retrain
    rd = encode_train_reply("site_b", TrainReply(val_dice=0.8, case_count=12))
    assert decode_train_reply(rd, "node 2") == ("site_b", TrainReply(val_dice=0.8, case_count=12))
    rd["weights"] = ArrayRecord({"conv.weight": Array(np.zeros((4, 4), dtype=np.float32))})
    with pytest.raises(ProtocolError, match="unexpected \\['weights'\\]"):
        decode_train_reply(rd, "node 2")
    rd = encode_train_reply("site_b", TrainReply(val_dice=0.8, case_count=12))
    rd[Key.METRICS] = MetricRecord({"val_dice": 0.8, "case_count": 12, "loss": 1.0})
    with pytest.raises(ProtocolError, match="field loss"):
        decode_train_reply(rd, "node 2")


def test_eval_round_trip() -> None:
    state = {"w": torch.randn(3, 2), "num_batches_tracked": torch.tensor(4)}
    cfg = EvalConfig(run_id="r", run_name="multi", model_name="enet", size=32)
    cfg2, state2 = decode_eval(encode_eval(cfg, state))
    assert cfg2 == cfg and torch.equal(state2["w"], state["w"])
    assert int(state2["num_batches_tracked"]) == 4
    rep = EvalReply(dice_mean=0.5, dice_std=0.1, voe_mean=0.4, voe_std=0.1, hd95_mean=float("nan"),
                    hd95_std=float("nan"), hd95_undefined=2, n=2)
    site, back = decode_eval_reply(encode_eval_reply("site_c", rep), "node 3")
    assert site == "site_c" and back.dice_mean == 0.5 and back.hd95_undefined == 2


def test_eval_request_is_packed_and_round_trips_bit_identical() -> None:
    from common.models import build_model

    model = build_model("enet", in_channels=1, num_classes=2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["extra.half"] = torch.tensor([[1.5, -0.0]], dtype=torch.float16)
    nan = torch.tensor([1, 0x7FC00001], dtype=torch.int32).view(torch.float32)  # NaN payload
    state["extra.nan"] = nan
    cfg = EvalConfig(run_id="r", run_name="multi", model_name="enet", size=32)
    rd = encode_eval(cfg, state)
    packed = rd[Key.STUDENT]
    dtypes = {str(v.numpy().dtype) for v in state.values()}
    assert sorted(packed.keys()) == sorted(dtypes) == ["float16", "float32", "int64"]
    n32 = sum(v.numel() for v in state.values() if v.dtype == torch.float32)
    assert packed["float32"].numpy().shape == (n32,)  # one flat array per dtype
    assert len(rd[Key.LAYOUT]["names"]) == len(state)
    cfg2, back = decode_eval(rd)
    assert cfg2 == cfg and list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert back[k].numpy().tobytes() == v.numpy().tobytes(), k  # bit-identical, NaN too
    build_model("enet", in_channels=1, num_classes=2).load_state_dict(
        {k: v for k, v in back.items() if not k.startswith("extra.")}, strict=True)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda rd: rd[Key.LAYOUT].__setitem__("dims", [3, 3]), "student array 'float32' too short"),
    (lambda rd: rd[Key.LAYOUT].__setitem__("dims", [3, 1]), "longer than its tensors"),
    (lambda rd: rd[Key.LAYOUT].__setitem__("names", ["w", "w"]), "duplicate tensor names"),
    (lambda rd: rd[Key.LAYOUT].__setitem__("dtypes", ["float32", "float64"]), "do not match"),
    (lambda rd: rd[Key.STUDENT].__setitem__(
        "float32", Array(np.zeros((3, 2), np.float32))), "expected a 1-D float32 array"),
    (lambda rd: rd[Key.LAYOUT].__setitem__("dims", [3]), "ndims add up to 2, dims has 1"),
    (lambda rd: rd.__delitem__(Key.LAYOUT), "layout"),
])
def test_a_packed_student_that_does_not_match_its_layout_is_refused(edit, match: str) -> None:
    state = {"w": torch.randn(3, 2), "num_batches_tracked": torch.tensor(4)}
    rd = encode_eval(EvalConfig(run_id="r", run_name="x", model_name="enet", size=32), state)
    assert dict(rd[Key.LAYOUT]) == {"names": ["w", "num_batches_tracked"],
                                    "dtypes": ["float32", "int64"], "ndims": [2, 0],
                                    "dims": [3, 2]}
    edit(rd)
    with pytest.raises(ProtocolError, match=match):
        decode_eval(rd)


def test_eval_reply_carries_per_case_scores() -> None:
    from common.protocol import eval_scores

    rep = EvalReply(dice_mean=0.5, dice_std=0.1, voe_mean=0.4, voe_std=0.1, hd95_mean=3.0,
                    hd95_std=0.0, hd95_undefined=1, n=2,
                    cases={"case000": {"dice": 0.6, "voe": 0.43, "hd95": 3.0},
                           "case001": {"dice": 0.4, "voe": 0.37, "hd95": None}})
    rd = encode_eval_reply("site_a", rep)
    assert dict(rd[Key.CASES]) == {"case000.dice": 0.6, "case000.voe": 0.43,
                                   "case000.hd95": 3.0, "case001.dice": 0.4,
                                   "case001.voe": 0.37}  # an undefined HD95 is left out
    assert "cases" not in dict(rd[Key.METRICS])
    site, back = decode_eval_reply(rd, "node 1")
    assert site == "site_a" and back == rep
    summary, cases = eval_scores(back)
    assert summary["dice_mean"] == 0.5 and "cases" not in summary
    assert cases["case000"] == {"dice": 0.6, "voe": 0.43, "hd95": 3.0}
    assert cases["case001"]["dice"] == 0.4 and np.isnan(cases["case001"]["hd95"])
    plain = EvalReply(**{k: v for k, v in rep.model_dump().items()})
    assert Key.CASES not in encode_eval_reply("site_a", plain).keys()
    assert eval_scores(decode_eval_reply(encode_eval_reply("s", plain), "n")[1])[1] == {}
    for key, value, match in [("case000.secret", 1.0, "unexpected key 'case000.secret'"),
                              ("patient7.dice", 1.0, "should match pattern"),
                              ("case001.dice", 1.5, "less than or equal to 1")]:
        bad = encode_eval_reply("site_a", rep)
        bad[Key.CASES][key] = value
        with pytest.raises(ProtocolError, match=match):
            decode_eval_reply(bad, "node 1")


def test_the_default_policy_lets_per_case_scores_leave_and_nothing_else() -> None:
    from site_node.policy import check_reply, default_policy, format_policy

    pol = default_policy()
    ok = {"site_name": "a", "dice_mean": 0.5, "case000.dice": 0.5, "case012.hd95": 2.0}
    assert check_reply(pol, "evaluate", {}, ok).allowed
    for key in ("case000.secret", "case0.dice", "caseX.dice", "patient_007.dice"):
        assert not check_reply(pol, "evaluate", {}, {**ok, key: 1.0}).allowed, key
    assert not check_reply(pol, "train", {}, {"case000.dice": 0.5}).allowed
    assert "per test case (caseNNN.<key>): dice, voe, hd95" in format_policy(pol)


def test_fedavg_weights_pack_average_and_unpack_by_name() -> None:
    from flwr.app import RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from common.protocol import pack_weights, unpack_weights, without_layout

    a = {"w": torch.tensor([[1.0, 2.0]]), "n": torch.tensor(4), "b": torch.tensor([0.5])}
    b = {"w": torch.tensor([[3.0, 6.0]]), "n": torch.tensor(8), "b": torch.tensor([1.5])}
    fields, rec_a = pack_weights(a)
    conf = {"server-round": 1, **fields}
    assert without_layout(conf) == {"server-round": 1} and sorted(rec_a.keys()) == [
        "float32", "int64"]
    replies = [RecordDict({"arrays": rec, "metrics": MetricRecord({"num-examples": k})})
               for rec, k in ((rec_a, 1), (pack_weights(b)[1], 3))]
    avg = aggregate_arrayrecords(replies, "num-examples")  # Flower's own weighted mean
    state, layout = unpack_weights(conf, avg, "t")
    assert layout is not None and list(state) == ["w", "n", "b"]
    assert state["w"].tolist() == [[2.5, 5.0]] and state["b"].tolist() == [1.25]
    assert state["n"].dtype == torch.int64 and int(state["n"]) == 7  # 0.25*4 + 0.75*8
    plain = ArrayRecord(a)  # one array per tensor (no layout fields): still read
    back, none = unpack_weights({"server-round": 1}, plain, "t")
    assert none is None and torch.equal(back["w"], a["w"])
    with pytest.raises(ProtocolError, match="weights array 'float64'"):
        unpack_weights(conf, ArrayRecord({"float64": Array(np.zeros(3))}), "t")


def test_whole_field_travels_only_when_asked() -> None:
    """A centre-tile query (the default) carries no ``whole_field`` key, so a site of an
    earlier version still reads it; a whole-field query carries it and decodes to True."""
    images, masks, cfg = _proxy()
    plain = encode_query(images, masks, cfg)
    assert "whole_field" not in dict(plain[Key.CONFIG])
    assert decode_query(plain)[0].whole_field is False
    whole = encode_query(images, masks, cfg.model_copy(update={"whole_field": True}))
    assert dict(whole[Key.CONFIG])["whole_field"] is True
    assert decode_query(whole)[0].whole_field is True
