"""schedules service (see docs/architecture.md)."""
