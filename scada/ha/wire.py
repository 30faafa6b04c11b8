"""The replication stream's frames and handshake, pure (no I/O): what :mod:`scada.ha.replication`
sends and accepts (issue 22, docs/redundancy.md "Replication").

A frame is ``uint32 length`` (big-endian, of what follows) + ``uint16 header length`` + a
JSON object (the header: ``t`` its type, ``tok`` the sender's fencing token on every state
frame) + the payload (raw bytes of a state file). Anything else (a length past the limit, a
header that is not a JSON object with a known ``t``, a payload whose length disagrees with the
header's ``n``, a path outside the streams) is :class:`Malformed`: counted and the link
dropped, the server keeps running.

Handshake (both ends prove they hold the pair's shared secret; nothing is sent before):

    active  -> standby  hello   {v, node, nonce}
    standby -> active   auth    {node, nonce, mac = HMAC(secret, "client" | nonces | node),
                                 tok (newest token seen), have {path: [size, hash]}}
    active  -> standby  welcome {node, tok, mac = HMAC(secret, "server" | nonces | node)}

then ``data`` / ``del`` / ``sync`` frames from the active, ``ack`` frames from the standby,
each followed by a 32-byte HMAC-SHA256 of the frame and its number in its direction, under a
key of that direction derived from the secret and both nonces (:class:`Seal`): a frame
changed, injected, replayed or reordered on the way is refused, so the fencing token a frame
carries is the active's. (The content is not encrypted: see docs/redundancy.md.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import posixpath
import struct
from typing import Any

from ..errors import ScadaError

VERSION = 1
#: the bytes of a log file the two ends compare to agree on an offset (its last bytes)
TAIL = 64
TYPES = frozenset({"hello", "auth", "welcome", "data", "del", "sync", "ack", "error"})


class Malformed(ScadaError, ValueError):
    """A frame that does not follow this module's format (counted and refused)."""


MAC_LEN = 32


class Seal:
    """The MAC of one direction of an authenticated link: frame number ``k`` is sealed with
    HMAC-SHA256(key, k | body); the receiver expects the numbers in order."""

    def __init__(self, secret: bytes, direction: str, server_nonce: str, client_nonce: str):
        self.key = hmac.new(secret, f"session|{direction}|{server_nonce}|{client_nonce}".encode(),
                            hashlib.sha256).digest()
        self.count = 0

    def tag(self, body: bytes) -> bytes:
        m = hmac.new(self.key, self.count.to_bytes(8, "big"), hashlib.sha256)
        m.update(body)
        self.count += 1
        return m.digest()


def encode(header: dict[str, Any], payload: bytes = b"", seal: Seal | None = None) -> bytes:
    h = json.dumps({**header, "n": len(payload)}, separators=(",", ":")).encode()
    if len(h) > 0xFFFF:
        raise ValueError("replication frame header too large")
    body = struct.pack(">H", len(h)) + h + payload
    if seal is None:
        return struct.pack(">I", len(body)) + body
    mac_ = seal.tag(body)
    return struct.pack(">I", len(body) + MAC_LEN) + body + mac_


def frame_length(prefix: bytes, max_frame: int) -> int:
    """Length of the rest of a frame from its first 4 bytes (:class:`Malformed` past
    ``max_frame``)."""
    (n,) = struct.unpack(">I", prefix)
    if n < 2 or n > max_frame:
        raise Malformed(f"frame of {n} bytes (limit {max_frame})")
    return n


def decode(body: bytes, seal: Seal | None = None) -> tuple[dict[str, Any], bytes]:
    """Header and payload of a frame's body (what follows the length); with ``seal``, the
    body ends with its MAC, checked first."""
    if seal is not None:
        if len(body) < MAC_LEN + 2:
            raise Malformed("frame shorter than its MAC")
        body, got = body[:-MAC_LEN], body[-MAC_LEN:]
        if not hmac.compare_digest(got, seal.tag(body)):
            raise Malformed("frame MAC does not match (altered, injected, replayed or "
                            "reordered frame, or another secret)")
    if len(body) < 2:
        raise Malformed("frame shorter than its header length")
    (hl,) = struct.unpack(">H", body[:2])
    if 2 + hl > len(body):
        raise Malformed("header longer than the frame")
    try:
        h = json.loads(body[2:2 + hl])
    except (ValueError, UnicodeDecodeError) as e:
        raise Malformed(f"header is not JSON: {e}") from None
    if not isinstance(h, dict) or h.get("t") not in TYPES:
        raise Malformed(f"unknown frame type {h.get('t') if isinstance(h, dict) else h!r}")
    payload = body[2 + hl:]
    if h.get("n") != len(payload):
        raise Malformed(f"payload of {len(payload)} bytes, header says {h.get('n')!r}")
    tok = h.get("tok")
    if tok is not None and (not isinstance(tok, int) or isinstance(tok, bool) or tok < 0):
        raise Malformed(f"fencing token {tok!r}")
    return h, payload


def mac(secret: bytes, role: str, server_nonce: str, client_nonce: str, node: str) -> str:
    msg = "|".join((role, server_nonce, client_nonce, node)).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def check_mac(secret: bytes, got: Any, role: str, server_nonce: str, client_nonce: str,
              node: str) -> bool:
    return isinstance(got, str) and hmac.compare_digest(
        got, mac(secret, role, server_nonce, client_nonce, node))


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def check_path(path: Any) -> tuple[str, str]:
    """``stream/relative/name`` -> (stream, relative name); :class:`Malformed` for anything
    that could leave the stream's directory."""
    if not isinstance(path, str) or not path or "\\" in path or "\x00" in path:
        raise Malformed(f"bad path {path!r}")
    stream, _, rel = path.partition("/")
    norm = posixpath.normpath(rel) if rel else ""
    if (not stream or not rel or rel.startswith("/") or norm != rel or norm.startswith("..")
            or any(p.startswith(".") for p in rel.split("/"))):
        raise Malformed(f"bad path {path!r}")
    return stream, rel


def int_field(h: dict[str, Any], name: str) -> int:
    v = h.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise Malformed(f"{h.get('t')} frame: {name} {v!r}")
    return v
