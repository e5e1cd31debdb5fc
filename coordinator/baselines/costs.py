"""What each result row costs a site: bytes on the wire, messages, what left it, wall time.

Every byte count is a serialized payload size: the ``RecordDict`` content of one Flower message
encoded with Flower's own protobuf serde (``flwr.common.serde.recorddict_to_proto``), which is
what the Deployment Engine sends. In ``--local`` the very same request and reply records the
federated path builds (``common.protocol`` for MT-KD queries; Flower's ``FedAvg`` messages for
the FedAvg row) are encoded and measured, so the counts are the wire's, not estimates. Each
message is one line of a :class:`PayloadLog` (``payloads.jsonl``); the per-site totals are sums
over that log and nothing else.

Direction words are the site's: ``sent`` = left the site, ``received`` = arrived at the site.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from coordinator.distill.cache import Targets
    from coordinator.distill.config import ExperimentConfig
    from coordinator.distill.proxy import ProxySet

Direction = Literal["sent", "received"]
#: What left the sites for a row (the trade-off plot's marker).
PRIVACY_CLASSES = ("nothing", "outputs on proxy", "model weights", "raw data (pooled)")


def payload_bytes(content: RecordDict) -> int:
    """Serialized size in bytes of one message's ``RecordDict`` payload (Flower protobuf)."""
    from flwr.common import serde

    return int(serde.recorddict_to_proto(content).ByteSize())


@dataclass
class PayloadEntry:
    """One message as the site saw it."""

    site: str
    direction: Direction
    msg_type: str
    step: str  # e.g. "query-3", "round-2"
    nbytes: int


@dataclass
class PayloadLog:
    """Every message of one row, in order; totals are sums over the entries."""

    entries: list[PayloadEntry] = field(default_factory=list)

    def add(self, site: str, direction: Direction, msg_type: str, step: str,
            content: RecordDict) -> int:
        """Measure ``content`` and log it; returns its size in bytes."""
        n = payload_bytes(content)
        self.entries.append(PayloadEntry(site, direction, msg_type, step, n))
        return n

    def totals(self, sites: list[str]) -> dict[str, dict[str, int]]:
        """``{site: {"sent": B, "received": B, "messages": count}}`` (zeros for quiet sites)."""
        out = {s: {"sent": 0, "received": 0, "messages": 0} for s in sites}
        for e in self.entries:
            out[e.site][e.direction] += e.nbytes
            out[e.site]["messages"] += 1
        return out

    def write(self, path: Path) -> None:
        """One JSON line per message."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(asdict(e)) + "\n" for e in self.entries))

    @staticmethod
    def read(path: Path) -> PayloadLog:
        """The log written by :meth:`write`."""
        lines = path.read_text().splitlines()
        return PayloadLog([PayloadEntry(**json.loads(line)) for line in lines if line])


def cost_summary(log: PayloadLog, sites: list[str], left: str, seconds: float,
                 where: str) -> dict[str, Any]:
    """A row's ``cost`` entry: per-site bytes/messages, their totals, what left, wall time."""
    per_site = log.totals(sites)
    return {"per_site": per_site, "left_site": left, "wall_seconds": seconds, "where": where,
            "messages": sum(v["messages"] for v in per_site.values()),
            "bytes_sent": sum(v["sent"] for v in per_site.values()),
            "bytes_received": sum(v["received"] for v in per_site.values())}


def query_log(proxy: ProxySet, targets: Targets, sites: list[str], teachers: list[int],
              cfg: ExperimentConfig, run_id: str = "local") -> PayloadLog:
    """The MT-KD query exchange of the federated path, rebuilt from the cached outputs: per
    proxy chunk, the ``query.teacher_outputs`` request each queried site receives and the
    teacher reply it sends (default fp16 codec), measured as serialized payloads."""
    from common.protocol import MsgType, QueryConfig, encode_query, encode_teacher_reply
    from coordinator.fed_query import chunks

    log = PayloadLog()
    parts = chunks(len(proxy), cfg.runs.query_chunk_size)
    for i, sl in enumerate(parts):
        qc = QueryConfig(run_id=run_id, chunk=i, n_chunks=len(parts), size=cfg.student.size,
                         at_form=cfg.kd.at_form, p=cfg.kd.at_p, slice_hashes=proxy.hashes[sl],
                         plan_json=proxy.plan.model_dump_json() if proxy.plan else "",
                         batch_size=cfg.student.teacher_batch_size,
                         temperature=cfg.kd.temperature,
                         whole_field=cfg.kd.teacher_field == "whole")
        request = encode_query(proxy.images[sl], proxy.masks[sl], qc)
        for j in teachers:
            log.add(sites[j], "received", MsgType.QUERY, f"query-{i}", request)
            reply = encode_teacher_reply(sites[j], qc, targets.teacher(j).index(sl))
            log.add(sites[j], "sent", MsgType.QUERY, f"query-{i}", reply)
    return log


def pooled_log(site_sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> PayloadLog:
    """What pooling ships: each site's prepared training slices ``images (N,1,S,S)`` float32
    and ``masks (N,S,S)`` uint8 as one ArrayRecord payload leaving the site."""
    from flwr.app import Array, ArrayRecord, RecordDict

    log = PayloadLog()
    for site, (images, masks) in site_sets.items():
        rec = ArrayRecord({"images": Array(np.ascontiguousarray(images, np.float32)),
                           "masks": Array(np.ascontiguousarray(masks, np.uint8))})
        log.add(site, "sent", "pool.upload", "upload", RecordDict({"arrays": rec}))
    return log
