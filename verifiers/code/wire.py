"""Framing and the plain-data codec used between the sandbox processes.

Messages are a 4-byte big-endian length followed by UTF-8 JSON. Values cross
process boundaries only as *plain data* of exact builtin types (``None``,
``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``list``,
``tuple``, ``dict``, ``set``, ``frozenset``); anything else stays behind as an
opaque handle. Decoding builds fresh builtin objects, so an object with a
forged ``__eq__`` can never reach the side that compares.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from json.decoder import JSONDecoder
from json.encoder import encode_basestring_ascii
from typing import Any, Callable

try:
    from _json import make_encoder as _c_make_encoder
except ImportError:  # an interpreter without the C accelerator
    _c_make_encoder = None

MAX_FRAME = 64 << 20
_HEADER = struct.Struct(">I")
_MAX_DEPTH = 200


class ProtocolError(Exception):
    """The other side sent something that is not a valid frame or value."""


class NotPlain(Exception):
    """A value that is not plain data of exact builtin types."""


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# Built once, where ``json.dumps``/``json.loads`` build an encoder and go
# through several Python layers per call: in a freshly forked program each
# first use of those layers copies pages it shares with the zygote. Messages
# are trees (``encode``'s output, verdicts), never cyclic, so no cycle check.
_ENCODE = (_c_make_encoder(None, _not_json, encode_basestring_ascii, None, ":", ",", False, False, True)
           if _c_make_encoder is not None else None)
_DECODER = JSONDecoder()


def dumps(message: Any) -> bytes:
    """Compact JSON, as ``json.dumps(message, separators=(",", ":"))`` gives it."""
    if _ENCODE is None:
        return json.dumps(message, separators=(",", ":")).encode()
    return "".join(_ENCODE(message, 0)).encode()


def loads(payload: bytes) -> Any:
    """One JSON value filling ``payload`` (UTF-8); ValueError otherwise."""
    text = payload.decode("utf-8")
    value, end = _DECODER.raw_decode(text)
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at {end}")
    return value


def write_frame(fd: int, message: Any) -> None:
    payload = dumps(message)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds {MAX_FRAME}")
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data):]


def read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes, or None on EOF before the first byte."""
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            if got:
                raise ProtocolError("truncated frame")
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Any:
    """The next message, or None on EOF."""
    header = read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    payload = read_exact(fd, size) if size else b""
    if payload is None:
        raise ProtocolError("truncated frame")
    try:
        return loads(payload)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"bad frame: {exc}") from None


class FrameReader:
    """``read_frame`` with a buffer: usually one ``read`` per frame instead of two."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def _fill(self, need: int) -> bool:
        while len(self.buffer) < need:
            chunk = os.read(self.fd, max(need - len(self.buffer), 1 << 16))
            if not chunk:
                if self.buffer:
                    raise ProtocolError("truncated frame")
                return False
            self.buffer += chunk
        return True

    def read(self) -> Any:
        """The next message, or None on EOF."""
        if not self._fill(_HEADER.size):
            return None
        (size,) = _HEADER.unpack_from(self.buffer)
        if size > MAX_FRAME:
            raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
        if not self._fill(_HEADER.size + size):
            raise ProtocolError("truncated frame")
        payload = bytes(self.buffer[_HEADER.size:_HEADER.size + size])
        del self.buffer[:_HEADER.size + size]
        try:
            return loads(payload)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"bad frame: {exc}") from None


def encode(value: Any, on_other: Callable[[Any], Any] | None = None, depth: int = 0) -> Any:
    """Plain data → JSON-able tree; other objects go through ``on_other`` (else ``NotPlain``)."""
    if depth > _MAX_DEPTH:
        raise NotPlain("nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float or kind is str:
        return value
    d = depth + 1
    if kind is list:
        return [encode(v, on_other, d) for v in value]
    if kind is tuple:
        return {"t": [encode(v, on_other, d) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, on_other, d), encode(v, on_other, d)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {"s" if kind is set else "f": [encode(v, on_other, d) for v in value]}
    if kind is bytes:
        return {"b": base64.b64encode(value).decode()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    if on_other is None:
        raise NotPlain(f"{kind.__name__} is not plain data")
    return on_other(value)


def decode(tree: Any, on_ref: Callable[[int], Any] | None = None,
           on_module: Callable[[str], Any] | None = None, depth: int = 0) -> Any:
    """Inverse of ``encode``; every container is rebuilt from builtin types."""
    if depth > _MAX_DEPTH:
        raise ProtocolError("nested too deeply")
    kind = type(tree)
    if tree is None or kind is bool or kind is int or kind is float or kind is str:
        return tree
    d = depth + 1
    if kind is list:
        return [decode(v, on_ref, on_module, d) for v in tree]
    if kind is not dict or len(tree) != 1:
        raise ProtocolError(f"unexpected value {tree!r:.80}")
    (tag, body), = tree.items()
    try:
        if tag == "t":
            return tuple(decode(v, on_ref, on_module, d) for v in body)
        if tag == "d":
            return {decode(k, on_ref, on_module, d): decode(v, on_ref, on_module, d) for k, v in body}
        if tag == "s":
            return {decode(v, on_ref, on_module, d) for v in body}
        if tag == "f":
            return frozenset(decode(v, on_ref, on_module, d) for v in body)
        if tag == "b":
            return base64.b64decode(body, validate=True)
        if tag == "c":
            return complex(float(body[0]), float(body[1]))
        if tag == "r" and on_ref is not None and type(body) is int:
            return on_ref(body)
        if tag == "m" and on_module is not None and type(body) is str:
            return on_module(body)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad {tag!r} value: {exc}") from None
    raise ProtocolError(f"unexpected tag {tag!r}")
