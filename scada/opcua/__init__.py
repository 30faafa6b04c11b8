"""opcua service (see docs/architecture.md)."""
