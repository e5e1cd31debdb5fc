"""Wire schema of the federated transport (Flower Message API), validated on both sides.

Every message is a Flower ``RecordDict`` with a fixed set of record keys (:class:`Key`):

=================  ==========================================  ==============================
message type       request records                             reply records
=================  ==========================================  ==============================
``train``          config: TrainConfig                         site: SiteInfo, metrics:
                                                               TrainReply (NO arrays: a site
                                                               never sends weights)
``query.teacher_   config: QueryConfig, arrays: images float32 site: SiteInfo, config:
outputs``          (N,1,S,S), masks uint8 (N,S,S)              QueryEcho, arrays: logits fp16
                                                               (or probs_u8 / logits_ds: the
                                                               site's ``compression``)
                                                               (N,2,S,S), at_early fp16
                                                               (N,S/2,S/2), at_deep fp16
                                                               (N,S/8,S/8), rc_early/rc_deep
                                                               float32 (N,)
``evaluate``       config: EvalConfig, layout: Layout (names,  site: SiteInfo, metrics:
                   dtypes, shapes), student: the state_dict    EvalReply, cases (optional):
                   packed, one flat array per dtype            ``caseNNN.dice|voe|hd95``
=================  ==========================================  ==============================

Every reply may also carry ``receipt`` (ConfigRecord of strings): the site's signed receipt of
the exchange-log entry covering exactly this reply (``common.audit.entries.make_receipt``);
the coordinator checks it with ``common.audit.entries.receipt_problem`` before decoding. Every
message, in both directions, may carry ``head`` (:class:`LogHead`): the sender's signed log
head, which the receiver checks and records in its own log (``common.audit.anchor``: log anchoring).

Any unexpected record or array key, wrong record type, dtype, shape, non-finite value or
invalid config field raises :class:`ProtocolError` with one line naming the peer and the key.
``flwr`` and ``torch`` are imported inside functions so that importing this package is cheap.

The package: :mod:`.messages` (message types, record keys, the pydantic payload models),
:mod:`.schemas` (tensor schemas, ``slice_hash`` and the record / array validators) and
:mod:`.codec` (the ``encode_*`` / ``decode_*`` functions); every name is re-exported here.
"""

from common.protocol.codec import (
    Layout,
    decode_eval,
    decode_eval_reply,
    decode_query,
    decode_teacher_arrays,
    decode_teacher_reply,
    decode_train,
    decode_train_reply,
    encode_eval,
    encode_eval_reply,
    encode_query,
    encode_teacher_reply,
    encode_train,
    encode_train_reply,
    eval_scores,
    pack_state,
    pack_weights,
    unpack_state,
    unpack_weights,
    without_layout,
)
from common.protocol.messages import (
    CASE_METRICS,
    FEATURE_KEYS,
    MAX_REASON_LEN,
    NORM_CODES,
    CaseScore,
    EvalConfig,
    EvalReply,
    Key,
    LogHead,
    MetricsReply,
    MsgType,
    ProtocolError,
    QueryConfig,
    QueryEcho,
    SiteInfo,
    TrainConfig,
    TrainReply,
)
from common.protocol.schemas import (
    NUM_CLASSES,
    check_records,
    decode_arrays,
    decode_model,
    query_schema,
    reply_schema,
    slice_hash,
)

__all__ = [
    "FEATURE_KEYS", "MAX_REASON_LEN", "NORM_CODES", "NUM_CLASSES", "EvalConfig", "EvalReply",
    "Key", "LogHead", "MetricsReply", "MsgType", "ProtocolError", "QueryConfig", "QueryEcho",
    "SiteInfo",
    "TrainConfig", "TrainReply", "check_records", "decode_arrays", "decode_eval",
    "decode_eval_reply", "decode_model", "decode_query", "decode_teacher_arrays",
    "decode_teacher_reply", "decode_train",
    "decode_train_reply", "encode_eval", "encode_eval_reply", "encode_query", "eval_scores",
    "CASE_METRICS", "CaseScore", "Layout", "pack_state", "pack_weights", "unpack_state",
    "unpack_weights", "without_layout",
    "encode_teacher_reply", "encode_train", "encode_train_reply", "query_schema",
    "reply_schema", "slice_hash",
]
