"""CLI command groups; ``cli.py`` imports each and calls its ``register(main)``."""
