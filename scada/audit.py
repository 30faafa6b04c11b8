"""Append-only audit log: who did what, when, to which node, old -> new, outcome.

One JSON object per line, written with ``O_APPEND`` and flushed per entry so a crash loses at
most the entry being written. The file is never rewritten; rotation is the operator's choice
(logrotate ``copytruncate`` is *not* appropriate; use ``create``).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from .clock import Clock


class AuditLog:
    def __init__(self, path: str, clock: Clock):
        self.path = path
        self.clock = clock
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()

    def record(self, *, user: str | None, action: str, target: str, outcome: str, **fields: Any) -> None:
        entry = {"ts": self.clock.time(), "user": user or "anonymous", "action": action,
                 "target": target, "outcome": outcome, **fields}
        data = (json.dumps(entry, default=str, separators=(",", ":")) + "\n").encode()
        with self._lock:
            os.write(self._fd, data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def read(path: str) -> list[dict[str, Any]]:
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
