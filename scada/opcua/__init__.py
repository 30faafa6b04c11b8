"""HMI-facing OPC UA server: lazy address space over the tag database, roles, audit, history.

See :mod:`scada.opcua.server` (service), :mod:`.address_space` (lazy nodes, monitored mask),
:mod:`.security` (certificates, trust list, users), :mod:`.history` (HistoryRead) and
docs/opcua.md (how an HMI connects).
"""
