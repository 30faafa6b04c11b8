"""alarms service (see docs/architecture.md)."""
