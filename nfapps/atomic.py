"""Files that are either completely written or not written at all, in one checked container format.

Saved flows (:func:`nfapps.save`) and training checkpoints (:func:`nfapps.fit`) share it.
A container is, byte by byte (integers little-endian)::

    offset  size  field
    0       7     magic  b"NFAPPS\\0"
    7       1     format version (currently 1)
    8       16    kind, ASCII, NUL-padded ("flow", "checkpoint", "integrator")
    24      8     payload length n (unsigned)
    32      32    SHA-256 of the payload
    64      n     payload: torch.save of a dict of plain types (None, bool, int, float, str,
                  lists, tuples, dicts) and tensors, read back with torch.load(weights_only=True)

Every way a file can be unusable — truncated, corrupted, not an nfapps file, the wrong kind,
written by a newer nfapps — raises :class:`FlowFileError` with a one-line message naming the
file and saying what to do. Writes go to a temporary file in the same directory, are fsync'ed,
and then atomically renamed over the target, so a crash leaves either the old file or the new.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MAGIC = b"NFAPPS\0"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<7sB16sQ32s")  # magic, version, kind, payload length, sha256
HEADER_SIZE = _HEADER.size  # 64

#: The kinds of container, and what writes and reads each (used in error messages).
KINDS: dict[str, str] = {
    "flow": "a saved flow (written by nfapps.save, read by nfapps.load)",
    "checkpoint": "a training checkpoint (written and resumed by nfapps.fit(..., checkpoint=path))",
    "integrator": "an integration run's state (written and resumed by Integrator.save / Integrator.restore)",
    "estimate": "an estimate in progress (written and resumed by Integrator.integrate(..., checkpoint=path))",
    "density": "a conditional background density (written by ConditionalDensity.save, read by ConditionalDensity.load)",
    "density-folds": "cross-fitted background densities (written by DensityFolds.save, read by DensityFolds.load)",
    "classifier": "a trained classifier (written by EpochEnsemble.save, e.g. cross_fit's checkpoints; read by EpochEnsemble.load)",
    "codec": "a flow image codec (written by ImageCodec.save / `nfapps codec train`, read by ImageCodec.load)",
    "codec-checkpoint": "a codec training checkpoint (written and resumed by nfapps.codec.train_codec)",
}

_SCALARS = (type(None), bool, int, float, str)


class FlowFileError(ValueError):
    """An nfapps file that cannot be used: truncated, corrupt, foreign, wrong kind or too new."""


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The bytes go to a uniquely named temporary file in the same directory (same filesystem),
    which is flushed and fsync'ed, then ``os.replace``d over ``path``; the directory entry is
    fsync'ed too where the platform allows it. On any failure the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool) -> Path:
    """Call ``write(tmp)`` on a fresh temporary file next to ``path``, fsync it, then move it into place:
    for writers that need a path (h5py, uproot) rather than bytes.

    Without ``overwrite`` an existing ``path`` is an error, checked before writing and again at the
    move, which uses ``os.link`` (fails if the name exists) where the filesystem allows it.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a file path")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: directory {path.parent} does not exist")
    exists_msg = f"{path} already exists; refusing to overwrite it (pass overwrite=True to replace it)"
    if path.exists() and not overwrite:
        raise ValueError(exists_msg)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode honours the umask
    os.close(fd)
    try:
        write(str(tmp))
        _fsync_file(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ValueError(exists_msg) from None
            except OSError:  # no hard links here: check-then-rename
                if path.exists():
                    raise ValueError(exists_msg) from None
                os.replace(tmp, path)
            tmp.unlink(missing_ok=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def dump(obj: dict[str, Any], path: str | os.PathLike, kind: str) -> None:
    """Write ``obj`` (a dict of plain types and tensors) to ``path`` as a ``kind`` container, atomically."""
    if kind not in KINDS:
        raise ValueError(f"unknown container kind {kind!r}; expected one of {sorted(KINDS)}")
    _check_plain(obj, "obj")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, kind.encode("ascii"), len(payload), hashlib.sha256(payload).digest())
    write_bytes_atomic(path, header + payload)


def load_container(path: str | os.PathLike, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read back what :func:`dump` wrote, checking every header field and the checksum.

    Raises ``FileNotFoundError`` if ``path`` does not exist and :class:`FlowFileError` if it is
    not an intact ``kind`` container of a format version this nfapps can read.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown container kind {kind!r}; expected one of {sorted(KINDS)}")
    data = Path(path).read_bytes()
    expected = KINDS[kind]
    if not (data.startswith(MAGIC) or MAGIC.startswith(data)):
        raise FlowFileError(f"{path} is not an nfapps file (no nfapps header); expected {expected}")
    if len(data) < HEADER_SIZE:
        raise FlowFileError(f"{path} is truncated ({len(data)} bytes, shorter than the header); re-copy or re-create it")
    _, version, raw_kind, length, digest = _HEADER.unpack_from(data)
    if version > FORMAT_VERSION:
        raise FlowFileError(
            f"{path} was written by a newer nfapps (file format {version}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade nfapps to read it"
        )
    found = raw_kind.rstrip(b"\0").decode("ascii", errors="replace")
    if version < 1 or found not in KINDS:
        raise FlowFileError(f"{path} has a damaged header (format {version}, kind {found!r}); re-copy or re-create it")
    if found != kind:
        raise FlowFileError(f"{path} is {KINDS[found]}, not {expected}; pass it to the right function")
    payload = data[HEADER_SIZE:]
    if len(payload) < length:
        raise FlowFileError(
            f"{path} is truncated ({HEADER_SIZE + len(payload)} of {HEADER_SIZE + length} bytes); "
            "it was cut off while being copied or written — re-copy or re-create it"
        )
    if len(payload) > length or hashlib.sha256(payload).digest() != digest:
        raise FlowFileError(f"{path} is corrupted (checksum mismatch); re-copy it or re-create it")
    try:
        obj = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # intact bytes that torch cannot read: written by an incompatible torch
        raise FlowFileError(f"{path} passed its checksum but torch cannot read it ({type(err).__name__}); "
                            "it was probably written with a different torch version") from None
    if not isinstance(obj, dict):
        raise FlowFileError(f"{path} holds a {type(obj).__name__}, not a dict; re-create it")
    return obj


def _check_plain(obj: Any, where: str) -> None:
    """Refuse, at write time, anything ``torch.load(weights_only=True)`` would refuse at read time."""
    if isinstance(obj, torch.Tensor) or type(obj) in _SCALARS:
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            _check_plain(key, f"{where} key")
            _check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(obj).__name__}; only plain types and tensors can be stored")


__all__ = ["FlowFileError", "KINDS", "dump", "load_container", "write_bytes_atomic"]
