"""Structured logging: one line per event, ``key=value`` fields, level configurable."""

from __future__ import annotations

import logging
import sys
import time


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace("\n", " | ")
        line = f"{ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} logger={record.name} msg={msg!r}"
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", " | ")
            line += f" exc={exc!r}"
        return line


def setup(level: str = "info", stream: object = None) -> None:
    """Configure the root logger once (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_scada", False):
            root.removeHandler(h)
    h = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    h._scada = True  # type: ignore[attr-defined]
    h.setFormatter(_Formatter())
    root.addHandler(h)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # chatty third-party loggers stay at warning unless debugging
    if level.lower() != "debug":
        for name in ("asyncua", "pymodbus", "amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # asyncua logs a full traceback ("Publish iteration crashed") at ERROR for every lost
        # junction session; the OPC UA driver already logs the loss once, in one line
        logging.getLogger("asyncua.client.ua_session").setLevel(logging.CRITICAL)
