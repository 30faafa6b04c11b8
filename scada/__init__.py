"""City SCADA core: site model, tag database, runtime and the services built on them.

The core never imports a protocol driver, a historian backend or a simulator; those are
loaded by name through entry points (see ``docs/architecture.md``).
"""

__version__ = "0.1.0"
