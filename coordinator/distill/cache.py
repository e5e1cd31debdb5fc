"""On-disk cache of teacher outputs, keyed by site and proxy hash, so reruns never re-query.

Format, one folder per site and proxy: ``root/<site>-<proxy digest[:16]>/`` with one ``.npy``
of ``N`` rows per field of :mod:`common.teacher_fields`, in its stored dtype: ``logits.npy
(N,K,S,S)``, ``at_early.npy (N,h0,w0)``, ``at_deep.npy (N,h1,w1)`` in **fp16**,
``rc_early.npy`` / ``rc_deep.npy (N,)`` in fp32, and a ``meta.json`` sidecar (format version,
``N`` and every shape). A site's answer is written as the wire carried it (fp16 arrays stay
fp16: no float32 round trip); reads give float32 ``(J, b, ...)`` rows. Why plain ``.npy``
read through ``numpy.memmap``:

* zero extra dependency (numpy is already here; safetensors / zarr would add one);
* random access per item: row ``i`` of a C-ordered ``.npy`` is one contiguous byte range at a
  known offset, so :class:`CachedTargets` maps and copies only the rows a batch needs;
* fp16 halves the bytes against fp32 and is already the precision the cache (and the wire)
  stored, so results are unchanged; the small RC scalars stay fp32 as before.

Every read maps just the rows it needs and unmaps them at once: a long-lived map would count each
page an epoch touched in the process's RSS (file pages), a short-lived one leaves them in the
page cache only. Writes stream chunk by chunk (each at its slice offset, in any order: federated
replies arrive as they come, :class:`SiteWriter`) into a temporary folder that is renamed into
place (atomic: a folder with ``meta.json`` is complete).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import atomic_write_bytes
from common.kd.targets import TeacherTargets
from common.teacher_fields import FIELD_NAMES, GRID_FIELDS, SCALAR_FIELDS, STORED_DTYPE

FORMAT = 1


class RowFile:
    """A C-ordered ``.npy`` file of shape ``(N, ...)`` read a few rows at a time."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            self.offset = fh.tell()
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered array; expected C order")
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def rows(self, a: int, b: int) -> np.ndarray:
        """Copy of rows ``a:b`` (``(b-a, ...)``), read through a map of just those bytes."""
        b = min(b, self.shape[0])
        if b <= a:
            return np.empty((0, *self.shape[1:]), self.dtype)
        mm = np.memmap(self.path, self.dtype, "r", offset=self.offset + a * self.row_bytes,
                       shape=(b - a, *self.shape[1:]))
        out = np.array(mm)
        del mm  # unmap now: touched pages do not stay in this process's RSS
        return out


def read_rows(arr: np.ndarray, a: int, b: int) -> np.ndarray:
    """``arr[a:b]`` as an in-memory copy; a file-backed ``np.memmap`` (e.g. a proxy set spilled
    to ``.npy``) is read through a short-lived map of those rows only."""
    if (isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap)  # not a view of one
            and arr.filename is not None and arr.flags.c_contiguous):
        row = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.itemsize
        b = min(b, arr.shape[0])
        mm = np.memmap(arr.filename, arr.dtype, "r", offset=arr.offset + a * row,
                       shape=(max(b - a, 0), *arr.shape[1:]))
        out = np.array(mm)
        del mm
        return out
    return np.array(arr[a:b])


class SiteFiles:
    """One site's cache folder: fp16 maps on disk, RC scalars (``(N,)`` fp32) in memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{folder}: teacher cache format {self.meta.get('format')} != "
                             f"{FORMAT}; delete the folder to re-query")
        self.maps = {n: RowFile(folder / f"{n}.npy") for n in GRID_FIELDS}
        self.scalars = {n: np.load(folder / f"{n}.npy") for n in SCALAR_FIELDS}
        self.n = int(self.meta["n"])

    def rows(self, a: int, b: int) -> dict[str, np.ndarray]:
        """Rows ``a:b`` of every field, maps still fp16."""
        out = {n: f.rows(a, b) for n, f in self.maps.items()}
        return {**out, **{n: v[a:b] for n, v in self.scalars.items()}}


class CachedTargets:
    """``J`` sites' cached targets for ``N`` proxy slices, read lazily from disk.

    Behaves like a :class:`TeacherTargets` of shape ``(J, N, ...)`` for what the distillation
    needs (``select``, ``index``, ``materialise``) without holding the maps in memory.
    """

    def __init__(self, sites: Sequence[SiteFiles]) -> None:
        if not sites:
            raise ValueError("CachedTargets needs at least one site")
        shapes = {json.dumps(s.meta["shapes"], sort_keys=True) for s in sites}
        if len(shapes) > 1:
            raise ValueError(f"cannot stack cached teacher outputs of shapes {sorted(shapes)}")
        self.sites = list(sites)

    @staticmethod
    def stack(parts: Sequence[CachedTargets]) -> CachedTargets:
        """Concatenate along the teacher axis (as :meth:`TeacherTargets.stack`)."""
        return CachedTargets([s for p in parts for s in p.sites])

    @property
    def num_teachers(self) -> int:
        """``J``."""
        return len(self.sites)

    @property
    def batch_size(self) -> int:
        """``N`` (proxy slices)."""
        return self.sites[0].n

    @property
    def key(self) -> str:
        """The site folders in teacher order (names the data, used to key stored weights)."""
        return "|".join(s.folder.name for s in self.sites)

    def select(self, teachers: Sequence[int]) -> CachedTargets:
        """Keep only ``teachers`` (in that order); nothing is read."""
        return CachedTargets([self.sites[j] for j in teachers])

    def teacher(self, j: int) -> CachedTargets:
        """Teacher ``j`` alone (J = 1)."""
        return self.select([j])

    def rows(self, a: int, b: int) -> dict[str, np.ndarray]:
        """Slices ``a:b`` of every field, ``(J, b-a, ...)``, maps as float32."""
        per = [s.rows(a, b) for s in self.sites]
        return {n: np.stack([p[n] for p in per]).astype(np.float32) for n in FIELD_NAMES}

    def index(self, idx: slice) -> TeacherTargets:
        """Contiguous slices ``idx`` (step 1) as float32 :class:`TeacherTargets`."""
        a, b, step = idx.indices(self.batch_size)
        if step != 1:
            raise ValueError("CachedTargets.index reads contiguous slices only (step 1)")
        return TeacherTargets(**{n: torch.from_numpy(v) for n, v in self.rows(a, b).items()})

    def materialise(self) -> TeacherTargets:
        """Everything in memory (float32): only for small sets and tests."""
        return self.index(slice(0, self.batch_size))


Targets = TeacherTargets | CachedTargets
"""Teacher targets in memory or in the on-disk cache."""


def iter_chunks(t: Targets, chunk: int) -> Iterator[tuple[int, TeacherTargets]]:
    """``(start, targets of slices start:start+chunk)`` over the proxy set, in order."""
    for a in range(0, t.batch_size, chunk):
        yield a, t.index(slice(a, a + chunk))


def materialise(t: Targets) -> TeacherTargets:
    """In-memory :class:`TeacherTargets` whichever the storage."""
    return t.materialise() if isinstance(t, CachedTargets) else t


class _Writer:
    """Writes chunks of one site's targets into ``tmp`` (``.npy`` files of ``N`` rows), each
    chunk at its own slice offset (in any order, each slice exactly once)."""

    def __init__(self, tmp: Path, n: int) -> None:
        self.tmp, self.n, self.done = tmp, n, 0
        self.files: dict[str, Any] = {}
        self.shapes: dict[str, list[int]] = {}
        self.offsets: dict[str, int] = {}
        self.filled = np.zeros(n, bool)  # (N,) which slices are written

    def add(self, arrays: Mapping[str, np.ndarray], start: int | None = None) -> None:
        """Write one site's arrays (``{field: (B, ...)}``, :mod:`common.teacher_fields`) at
        slices ``start:start+B`` (default: right after the slices written so far), each in its
        stored dtype (fp16 maps, fp32 scalars: an array already in it is written as is)."""
        a = self.done if start is None else start
        count = len(arrays[FIELD_NAMES[0]])
        b = a + count
        if a < 0 or b > self.n or self.filled[a:b].any():
            raise ValueError(f"{self.tmp}: slices {a}:{b} out of 0:{self.n} or written twice")
        for n in FIELD_NAMES:
            arr = np.ascontiguousarray(arrays[n], dtype=STORED_DTYPE[n])
            if n not in self.files:
                self._open(n, arr)
            if list(arr.shape[1:]) != self.shapes[n][1:]:
                raise ValueError(f"{self.tmp}: {n} rows of shape {arr.shape[1:]}, expected "
                                 f"{tuple(self.shapes[n][1:])}")
            self.files[n].seek(self.offsets[n] + a * arr[:1].nbytes)
            self.files[n].write(arr.tobytes())
            self.files[n].flush()  # the chunk leaves this process's buffers now
        self.filled[a:b] = True
        self.done += count

    def _open(self, name: str, arr: np.ndarray) -> None:
        fh = (self.tmp / f"{name}.npy").open("wb")
        shape = (self.n, *arr.shape[1:])
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False,
                 "shape": shape})
        self.files[name], self.shapes[name], self.offsets[name] = fh, list(shape), fh.tell()

    def close(self) -> None:
        """Check the count, close the files and write ``meta.json`` (last: marks complete)."""
        for fh in self.files.values():
            fh.close()
        if self.done != self.n:
            raise ValueError(f"{self.tmp}: {self.done} slices written, {self.n} announced")
        meta = {"format": FORMAT, "n": self.n, "shapes": self.shapes}
        (self.tmp / "meta.json").write_text(json.dumps(meta))


class SiteWriter:
    """One site's cache folder being filled (e.g. by query replies as they arrive): chunks go
    into a temporary folder; :meth:`commit` renames it into place (atomic), :meth:`abort`
    removes it, so a reader never sees a half cache."""

    def __init__(self, final: Path, n: int) -> None:
        self.final = final
        self.tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.writer = _Writer(self.tmp, n)

    def put(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Slices ``start:start+B`` of this site: its arrays ``{field: (B, ...)}`` as a query
        reply carries them (``common.protocol.decode_teacher_arrays``) or as
        :meth:`TeacherTargets.site_arrays` gives them."""
        self.writer.add(arrays, start)

    def commit(self) -> Path:
        """Check every slice is written, then rename the folder into place."""
        try:
            self.writer.close()
        except BaseException:
            self.abort()
            raise
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        """Drop what was written (the final folder, if any, is untouched)."""
        for fh in self.writer.files.values():
            fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class TeacherCache:
    """``root/<site>-<proxy digest[:16]>/``: one site's targets (module docstring's format)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, site: str, digest: str) -> Path:
        """Cache folder of ``site`` for the proxy set with ``digest``."""
        return self.root / f"{site}-{digest[:16]}"

    def open(self, site: str, digest: str) -> CachedTargets | None:
        """Lazy cached targets (``J = 1``) or None."""
        folder = self.folder(site, digest)
        if not (folder / "meta.json").exists():
            return None
        return CachedTargets([SiteFiles(folder)])

    def get(self, site: str, digest: str) -> TeacherTargets | None:
        """Cached targets in memory (float32) or None: small sets and tests only."""
        t = self.open(site, digest)
        return None if t is None else t.materialise()

    def put(self, site: str, digest: str, targets: TeacherTargets) -> Path:
        """Store ``targets`` (J = 1; maps as fp16) atomically."""
        return self.build(site, digest, targets.batch_size, lambda a, b: targets.index(
            slice(a, b)), chunk=max(targets.batch_size, 1))

    def build(self, site: str, digest: str, n: int,
              compute: Callable[[int, int], TeacherTargets], chunk: int = 512) -> Path:
        """Write ``compute(a, b)`` (targets of slices ``a:b``) for consecutive chunks of ``n``
        slices, streaming: only one chunk is ever in memory. Atomic (rename of the folder)."""
        writer = self.writer(site, digest, n)
        try:
            for a in range(0, n, chunk):
                writer.put(a, compute(a, min(a + chunk, n)).site_arrays())
        except BaseException:
            writer.abort()
            raise
        return writer.commit()

    def writer(self, site: str, digest: str, n: int) -> SiteWriter:
        """A :class:`SiteWriter` of ``n`` slices for ``site``'s folder (chunks in any order)."""
        return SiteWriter(self.folder(site, digest), n)

    def build_answers(self, site: str, digest: str, images: np.ndarray, masks: np.ndarray,
                      answer: Callable[[np.ndarray, np.ndarray], TeacherTargets],
                      chunk: int = 512) -> Path:
        """:meth:`build` from ``answer(images[a:b], masks[a:b])`` (``(b-a,1,S,S)``,
        ``(b-a,S,S)``): a teacher queried chunk by chunk."""
        return self.build(site, digest, images.shape[0], lambda a, b: answer(
            read_rows(images, a, b), read_rows(masks, a, b)), chunk)


BUILD_PIXELS = 512 * 64 * 64
"""Proxy pixels per teacher chunk while the cache is built (512 slices at 64 px)."""


def build_chunk(size: int, batch_size: int) -> int:
    """Slices per teacher chunk at side ``size``: about :data:`BUILD_PIXELS`, a whole number
    of teacher batches (so the teacher sees exactly the batches of one unchunked pass)."""
    return batch_size * max(1, BUILD_PIXELS // (size * size) // batch_size)


def masks_digest(masks: np.ndarray, chunk: int = 1024) -> str:
    """sha256 of ``masks (N,S,S)``' bytes, read ``chunk`` slices at a time."""
    h = hashlib.sha256()
    for a in range(0, masks.shape[0], chunk):
        h.update(np.ascontiguousarray(read_rows(masks, a, a + chunk)).tobytes())
    return h.hexdigest()


def stored_weights(t: CachedTargets, label: str, masks: np.ndarray,
                   compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Per-slice weights ``(N, J)`` of rule ``label`` for ``t``: read from beside the cache
    (``root/weights-<key>.npy``) or computed once by ``compute`` and stored atomically."""
    import io

    key = hashlib.sha256(f"{t.key}#{label}#{masks_digest(masks)}".encode()).hexdigest()
    path = t.sites[0].folder.parent / f"weights-{key[:24]}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path))
    w = compute()
    buf = io.BytesIO()
    np.save(buf, w.detach().cpu().numpy())
    atomic_write_bytes(path, buf.getvalue())
    return w
