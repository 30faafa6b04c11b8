"""Project exceptions. Each also inherits from the matching built-in so callers that only
know the standard library still catch them (``ConfigError`` is a ``ValueError``)."""

from __future__ import annotations


class ScadaError(Exception):
    """Base of every project exception."""


class ConfigError(ScadaError, ValueError):
    """A site or profile file is invalid.

    ``errors`` holds one human-readable line per problem, each naming the file, the line, the
    field path and what was expected, so an engineer fixes all of them in one pass.
    """

    def __init__(self, errors: list[str] | str):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        n = len(self.errors)
        head = f"{n} configuration error{'s' if n != 1 else ''}"
        super().__init__(head + ":\n" + "\n".join("  " + e for e in self.errors))


class UnknownTagError(ScadaError, KeyError):
    """A tag path or index that the tag database does not hold."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a sentence
        return str(self.args[0]) if self.args else "unknown tag"


class WriteRefused(ScadaError, PermissionError):
    """A write was refused before reaching the device; ``status`` is the OPC UA code to report."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class DriverError(ScadaError, RuntimeError):
    """A driver could not do what was asked (device unreachable, protocol exception, ...)."""


class StateDirInUse(ScadaError, BlockingIOError):
    """Another process holds the lock of a state directory (one server per state directory,
    see :mod:`scada.statelock`)."""

    def __init__(self, state_dir: str, pid: int | None):
        self.state_dir = state_dir
        self.pid = pid
        who = f"PID {pid}" if pid is not None else "another process"
        super().__init__(
            f"state directory {state_dir} is in use by {who}; one server per state directory: "
            f"stop that server, or give this one its own site.state_dir (scada demo: --state-dir)")

    def __str__(self) -> str:
        return str(self.args[0])


class CannotStart(ScadaError, OSError):
    """A part of the server cannot start for a reason retrying will not cure (a port taken, a
    directory it cannot create). The message says what, where, and which setting to change."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class CannotListen(CannotStart):
    """A port the server or the demo must listen on cannot be bound (in use, not local,
    privileged). The message names the address and the setting that chooses it."""
