"""CLI commands: alarms (filled in by the issue that owns them)."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this module's commands to the main group."""
