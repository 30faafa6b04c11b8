"""Registered client applications (citizen apps, FixMyStreet-style platforms) and their API keys.

A city registers a client with ``scada open311 add-client NAME --site site.yaml``: the command
prints a new random key once (256 bits, ``secrets.token_urlsafe(32)``) and stores only its
SHA-256 in ``<state_dir>/open311/clients.json`` (mode 0600). A random key of that length needs
no slow password hash: nobody can guess it, and a stolen file gives no key back. The running
server re-reads the file when it changes, so a client added or removed while it runs is
known on its next request. An authenticated client acts as ``open311:<name>`` with the
``citizen-app`` service role (:mod:`scada.operations.roles`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from typing import Any

from ..files import replace_text

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,59}$")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class Clients:
    def __init__(self, path: str):
        self.path = path
        self._by_hash: dict[str, str] = {}
        self._rows: dict[str, dict[str, Any]] = {}
        self._mtime: float | None = None

    # ------------------------------------------------------------------ read
    def _read(self) -> dict[str, dict[str, Any]]:
        if not os.path.exists(self.path):
            return {}
        with open(self.path, encoding="utf-8") as f:
            data = json.load(f)
        return dict(data.get("clients", {}))

    def refresh(self) -> None:
        """Re-read the file when it changed (cheap: one stat)."""
        try:
            m = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            m = None
        if m == self._mtime:
            return
        self._mtime = m
        self._rows = self._read()
        self._by_hash = {r["key_sha256"]: n for n, r in self._rows.items() if r.get("enabled", True)}

    def authenticate(self, key: str | None) -> str | None:
        """The client's name for ``key``, or None."""
        if not key:
            return None
        self.refresh()
        return self._by_hash.get(key_hash(key))

    def rows(self) -> dict[str, dict[str, Any]]:
        self.refresh()
        return {n: {k: v for k, v in r.items() if k != "key_sha256"} for n, r in self._rows.items()}

    # ------------------------------------------------------------------ change (CLI)
    def _write(self, rows: dict[str, dict[str, Any]]) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        replace_text(self.path, json.dumps({"clients": rows}, indent=1, sort_keys=True))
        os.chmod(self.path, 0o600)
        self._mtime = None

    def add(self, name: str, contact: str, now: float) -> str:
        """Register ``name``; returns the new key (shown once). ``ValueError`` if it exists."""
        if not _NAME.match(name):
            raise ValueError(f"client name {name!r}: letters, digits, '_', '-', '.' (at most 60)")
        rows = self._read()
        if name in rows:
            raise ValueError(f"client {name!r} already exists: remove it first to issue a new key")
        key = secrets.token_urlsafe(32)
        rows[name] = {"key_sha256": key_hash(key), "contact": contact, "created": now, "enabled": True}
        self._write(rows)
        return key

    def remove(self, name: str) -> None:
        rows = self._read()
        if name not in rows:
            raise KeyError(f"no client {name!r}")
        del rows[name]
        self._write(rows)
