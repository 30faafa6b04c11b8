"""``ha:`` section: a redundant pair of servers, one active, one hot standby (issue 22,
docs/redundancy.md).

Example::

    ha:
      etcd: [http://10.0.0.5:2379, http://10.0.0.6:2379, http://10.0.0.7:2379]
      lease_ttl: 5s                # the active steps down after lease_ttl/2 without renewal
      nodes:
        a: {opcua: opc.tcp://scada-a:4840, web: https://scada-a:8443, replication: scada-a:7400}
        b: {opcua: opc.tcp://scada-b:4840, web: https://scada-b:8443, replication: scada-b:7400}
      replication: {secret_file: ha-secret}

Both servers read the same site file; each is told which node it is with ``scada run --node
NAME`` (or ``SCADA_NODE``). Who is active is decided by an etcd lease (:mod:`scada.ha.lease`),
never by the two servers between themselves.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .common import Duration, Ident, Strict
from .ha_replication import ReplicationConfig


class NodeConfig(Strict):
    """Where the operators and the other server reach one node of the pair."""

    #: the node's OPC UA endpoint as clients reach it (published in the lease and in
    #: ``ServerUriArray``'s companion documentation; HMI clients list both)
    opcua: str | None = None
    #: the node's operator console (the standby's console sends operators there)
    web: str | None = None
    #: ``host:port`` the node's replication stream listens on (the standby connects to it)
    replication: str | None = None

    @field_validator("replication")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^\[?[A-Za-z0-9_.:\-]+\]?:\d{1,5}$", v):
            raise ValueError(f"expected host:port, got {v!r}")
        return v


def _endpoint(v: str) -> str:
    u = urlsplit(v if "://" in v else f"http://{v}")
    if u.scheme not in ("http", "https") or not u.hostname or u.port is None:
        raise ValueError(f"expected an etcd client URL such as http://10.0.0.5:2379, got {v!r}")
    if u.scheme == "https":
        raise ValueError(f"{v}: TLS to etcd is not supported yet; use http:// on a trusted "
                         "network (docs/redundancy.md, Settings)")
    return f"{u.scheme}://{u.hostname}:{u.port}"


class HaConfig(Strict):
    #: etcd client endpoints (one or the members of a cluster; tried in turn)
    etcd: list[str] = Field(min_length=1)
    #: the election key (default ``/scada/<site slug>/active``)
    key: str | None = None
    #: lease time to live: the standby takes over within about this after the active dies;
    #: the active stops writing after half of it without a successful renewal
    lease_ttl: Duration = Field(default=5.0, ge=2.0, le=300.0)
    nodes: dict[Ident, NodeConfig]
    replication: ReplicationConfig = Field(default_factory=ReplicationConfig)

    @field_validator("etcd")
    @classmethod
    def _etcd(cls, v: list[str]) -> list[str]:
        return [_endpoint(e) for e in v]

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or any(c.isspace() for c in v)):
            raise ValueError("an etcd key without spaces, e.g. /scada/dijon/active")
        return v

    @model_validator(mode="after")
    def _two(self) -> HaConfig:
        if len(self.nodes) != 2:
            raise ValueError(f"a redundant pair has exactly two nodes; got {len(self.nodes)} "
                             f"({', '.join(self.nodes) or 'none'})")
        return self

    def election_key(self, site_name: str) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", site_name.lower()).strip("-") or "site"
        return self.key or f"/scada/{slug}/active"
