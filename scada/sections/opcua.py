"""``opcua:`` section: the HMI-facing OPC UA server (owned by the OPC UA issue).

Secure by default: only signed/encrypted endpoints (Basic256Sha256, Aes128_Sha256_RsaOaep),
client certificates checked against ``trust_dir``, anonymous clients read-only. The demo site
turns ``allow_security_none`` on, and the server says so loudly at start.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import Duration, Strict


class OpcUaServerConfig(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(4840, ge=0, le=65535)
    #: Offer the unencrypted ``None`` endpoint (demo/lab only: passwords then travel in clear
    #: unless the client encrypts the user token, which asyncua does with the server key).
    allow_security_none: bool = False
    #: What an anonymous client may do: read and subscribe (``viewer``) or nothing (``none``).
    anonymous: Literal["viewer", "none"] = "viewer"
    #: Namespace URI of our tag nodes (NodeId ``ns=<index of this URI>;s=<tag path>``).
    namespace_uri: str = "urn:scada:streetlight:tags"
    #: Directory of trusted client certificates (DER/PEM); default ``<state_dir>/opcua/trusted``.
    trust_dir: str | None = None
    #: Accept any client certificate (lab only). Off: unknown certificates get BadCertificateUntrusted.
    trust_all_clients: bool = False
    #: Create an operator and an engineer account on first start (passwords in
    #: ``<state_dir>/opcua/demo-users.txt``). The demo turns it on.
    demo_users: bool = False
    max_sessions: int = Field(100, ge=1)
    max_subscriptions_per_session: int = Field(20, ge=1)
    max_monitored_items_per_subscription: int = Field(50_000, ge=1)
    max_pending_chunks: int = Field(64, ge=1)
    session_timeout: Duration = 60.0
    #: Failed logins before a user name is locked, and for how long.
    lockout_attempts: int = Field(5, ge=1)
    lockout: Duration = 300.0
