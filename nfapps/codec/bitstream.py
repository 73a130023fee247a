"""The flow codec's file format.

    offset  size  field
    0       4     magic b"NFIC"
    4       1     format version (2; version 1 stored the streams finest level first)
    5       1     image channels: 1 (grayscale) or 3 (RGB)
    6       4     height, unsigned big-endian
    10      4     width
    14      8     identifier of the model that wrote it (FlowCodec.identifier)
    22      2     number of streams S
    24      4·S   stream lengths
    …             the streams (entropy-coded latents and side information), coarsest level first
    end−4   4     CRC-32 of everything before it

The bit rate of an image is 8·(file size)/(H·W): header and checksum included. Every way a
file can be wrong — too short, another format, a newer version, a flipped byte, another model —
raises :class:`BitstreamError` with a one-line message, before any decoding starts.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"NFIC"
VERSION = 2
_HEAD = struct.Struct(">4sBBII8sH")
_CRC = struct.Struct(">I")
MAX_SIDE = 1 << 16


class BitstreamError(ValueError):
    """A codec file that cannot be decoded (truncated, corrupt, another format or model)."""


@dataclass(frozen=True)
class Header:
    channels: int
    height: int
    width: int
    model: bytes


def pack(header: Header, streams: list[bytes]) -> bytes:
    """The file's bytes for ``header`` and ``streams``."""
    if header.channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {header.channels}")
    if not (0 < header.height <= MAX_SIDE and 0 < header.width <= MAX_SIDE):
        raise ValueError(f"image sides must be in 1..{MAX_SIDE}, got {header.height}×{header.width}")
    if len(header.model) != 8:
        raise ValueError("the model identifier must be 8 bytes")
    body = _HEAD.pack(MAGIC, VERSION, header.channels, header.height, header.width, header.model, len(streams))
    body += struct.pack(f">{len(streams)}I", *(len(s) for s in streams)) + b"".join(streams)
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes, source: str = "the file") -> tuple[Header, list[bytes]]:
    """Header and streams of a codec file; :class:`BitstreamError` for anything malformed."""
    if len(data) < 4 or data[:4] != MAGIC:
        raise BitstreamError(f"{source} is not an nfapps flow-codec file (no NFIC magic); compress an image with `nfapps codec compress` first")
    if len(data) < _HEAD.size + _CRC.size:
        raise BitstreamError(f"{source} is truncated: {len(data)} bytes, shorter than the header; the file was cut off, compress the image again")
    magic, version, channels, height, width, model, count = _HEAD.unpack_from(data)
    if version != VERSION:
        raise BitstreamError(f"{source} has format version {version}; this nfapps reads version {VERSION}: use the nfapps release that wrote it")
    lengths_end = _HEAD.size + 4 * count
    if len(data) < lengths_end + _CRC.size:
        raise BitstreamError(f"{source} is truncated: {len(data)} bytes, too short for its {count} stream lengths; compress the image again")
    lengths = struct.unpack_from(f">{count}I", data, _HEAD.size)
    expected = lengths_end + sum(lengths) + _CRC.size
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "followed by extra bytes"
        raise BitstreamError(f"{source} is {state}: {len(data)} bytes where its header announces {expected}; compress the image again")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: len(data) - _CRC.size]) != crc:
        raise BitstreamError(f"{source} is corrupt: its CRC-32 checksum does not match (a byte changed since it was written); compress the image again")
    if channels not in (1, 3) or not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise BitstreamError(f"{source} has an invalid header ({channels} channels, {height}×{width}); compress the image again")
    streams, at = [], lengths_end
    for length in lengths:
        streams.append(data[at : at + length])
        at += length
    return Header(channels, height, width, model), streams
