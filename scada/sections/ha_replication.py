"""``ha.replication``: how the standby follows the active's durable state (issue 22,
:mod:`scada.ha.replication`, docs/redundancy.md "Replication").

The ``ha:`` section (:mod:`scada.sections.ha`) imports this model; the node addresses the
stream listens on and connects to are the nodes' ``replication: host:port``.
"""

from __future__ import annotations

from pydantic import Field

from .common import Duration, Strict


class ReplicationConfig(Strict):
    #: file holding the pair's shared secret (the same bytes on both servers, at least 16;
    #: e.g. ``head -c 32 /dev/urandom | base64 > secret``, mode 0600). Both ends prove they
    #: know it (HMAC-SHA256 challenge-response) before a byte of state is sent. Required for
    #: a pair; a relative path is relative to the site file.
    secret_file: str | None = None
    #: how often the active looks for new bytes in the state files it ships (one ``stat`` per
    #: file): the replication delay is at most this plus the network's
    interval: Duration = Field(default=0.05, gt=0, le=5)
    #: a standby drops a link silent for this long (the active sends a heartbeat every
    #: second) and reconnects to the lease holder
    timeout: Duration = Field(default=5.0, gt=0.5, le=120)
    #: largest frame accepted; bigger files are sent in pieces of a quarter of it
    max_frame_mb: float = Field(default=4.0, gt=0.06, le=64)
    #: the standby hands the active's alarm transitions to its OPC UA Alarms & Conditions and
    #: consoles as they arrive (never to the notifier: the active sent those)
    announce: bool = True
    #: the active announces an alarm batch (and an operator action returns) only once the
    #: standby acknowledged its journal lines (PostgreSQL's synchronous_commit = remote_write):
    #: a kill -9 of the active then loses no announced transition. Without a connected standby
    #: nothing waits; a standby that does not answer within ``sync_timeout`` is not waited for
    synchronous: bool = True
    sync_timeout: Duration = Field(default=5.0, gt=0, le=60)
