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
