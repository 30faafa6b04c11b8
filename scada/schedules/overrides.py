"""Operator overrides: "area centre at 100 % for 2 hours, reason: accident on rue de la Liberté".

An override beats every calendar rule for the luminaires it covers until it expires or is
cancelled. Overrides are kept in ``<state_dir>/schedules/overrides.json`` so that

* they survive a server restart (an override made before a restart still expires on time),
* ``scada schedule override list`` (another process) reads them; the server re-reads the file
  when its modification time changes (every ``schedules.tick``).

Changes are operator actions: the operator API (:meth:`scada.operations.Operations.set_override`,
reached by the CLI through the server) checks the role matrix (``schedule.override``: engineer)
and the user's areas, and audits them. The file is rewritten atomically (temporary file +
``os.replace``) under an advisory ``fcntl`` lock so readers never see a half-written file.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ..files import replace_text


@dataclass
class Override:
    id: str
    level: float
    start: float
    expires: float
    reason: str
    user: str
    areas: list[str] | None = None
    devices: list[str] | None = None
    groups: list[str] | None = None
    cancelled: float | None = None
    source: str = "cli"

    def active(self, now: float) -> bool:
        return self.cancelled is None and self.start <= now < self.expires

    def scope_text(self) -> str:
        parts = []
        for k in ("areas", "devices", "groups"):
            v = getattr(self, k)
            if v:
                parts.append(f"{k} {','.join(map(str, v))}")
        return "; ".join(parts) or "everything"


@dataclass
class OverrideStore:
    """The overrides file of a site (``<state_dir>/schedules``)."""

    directory: str
    overrides: list[Override] = field(default_factory=list)
    _stamp: tuple[int, int] | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.directory, "overrides.json")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(os.path.join(self.directory, "overrides.lock"), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> list[Override]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return []
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{self.path}: overrides file is not valid JSON ({e}); fix or delete it "
                f"(active overrides are then lost)"
            ) from e
        return [Override(**o) for o in data.get("overrides", [])]

    def _write(self, items: list[Override]) -> None:
        replace_text(self.path, json.dumps({"overrides": [asdict(o) for o in items]}, indent=1))

    def reload_if_changed(self) -> bool:
        """Re-read the file when its mtime/size changed; True when something was (re)loaded."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        with self._locked():
            self.overrides = self._read()
        return True

    def active(self, now: float) -> list[Override]:
        return [o for o in self.overrides if o.active(now)]

    def add(self, o: Override) -> Override:
        with self._locked():
            items = [x for x in self._read() if x.cancelled is None and x.expires > o.start - 86400]
            items.append(o)
            self._write(items)
            self.overrides = items
        return o

    def update(
        self, override_id: str, *, expires: float | None = None, cancelled: float | None = None
    ) -> Override:
        with self._locked():
            items = self._read()
            for o in items:
                if o.id == override_id or o.id.startswith(override_id):
                    if expires is not None:
                        o.expires = expires
                    if cancelled is not None:
                        o.cancelled = cancelled
                    self._write(items)
                    self.overrides = items
                    return o
        raise KeyError(f"no override {override_id!r} in {self.path}")


def new_override(
    *,
    level: float,
    minutes: float,
    reason: str,
    user: str,
    now: float,
    areas: list[str] | None = None,
    devices: list[str] | None = None,
    groups: list[str] | None = None,
    source: str = "cli",
) -> Override:
    if not 0 <= level <= 100:
        raise ValueError(f"override level must be 0..100 %, got {level}")
    if not 0 < minutes <= 7 * 24 * 60:
        raise ValueError(f"override duration must be 1 min .. 7 days, got {minutes} min")
    if not reason.strip():
        raise ValueError("an override needs a reason (it goes to the audit log)")
    return Override(
        id=uuid.uuid4().hex[:8],
        level=float(level),
        start=now,
        expires=now + minutes * 60.0,
        reason=reason,
        user=user,
        areas=areas,
        devices=devices,
        groups=groups,
        source=source,
    )
