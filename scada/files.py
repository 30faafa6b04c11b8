"""Small file helpers shared by the state files (journal snapshot, overrides, historian logs)."""

from __future__ import annotations

import os


def replace_text(path: str, text: str, fsync: bool = True) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8): written to ``path.tmp``, fsynced when
    ``fsync``, then renamed over ``path``, so a reader or a crash sees the old or the new file,
    never a part of one."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
