"""Security of the HMI-facing server: certificates, trust list, users (OPC UA Part 2, Part 4 §5.6).

Every unsafe asyncua default is replaced here:

* **User manager** - asyncua's ``PermissiveUserManager`` gives admin rights to anyone named
  ``admin`` whatever the password. :class:`SiteUserManager` asks the operator API
  (:meth:`scada.operations.Operations.authenticate`: the site's salted hashes, one lockout
  state for every front end) and maps anonymous clients to ``viewer`` or refuses them, as the
  site says. The session keeps the caller's :class:`~scada.operations.Identity`.
* **Endpoints** - only Basic256Sha256 and Aes128_Sha256_RsaOaep (Sign, SignAndEncrypt);
  ``None`` only with ``opcua.allow_security_none``. Basic128Rsa15 and Basic256 (deprecated by
  OPC UA 1.04, Part 7 "Security Policy" profiles) are never offered.
* **Client certificates** - on signed and encrypted channels, checked against a trust list
  directory (:class:`TrustList`): an unknown certificate gets ``BadCertificateUntrusted`` and a
  copy in ``rejected/`` for an administrator to move into ``trusted/`` (the usual OPC UA
  GDS-less workflow, Part 12 §7.3). On a None channel the client certificate is ignored, as
  Part 4 §5.6.2 says (real HMIs send one anyway).
* **Server certificate** - generated on first start (RSA 2048, SHA-256, application URI in
  the subjectAltName as Part 6 §6.2.2 requires) and kept in ``<state_dir>/opcua/``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import PermissionRuleset, User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..operations import Identity
from ._asyncua import current_channel

log = logging.getLogger(__name__)

#: Policies we offer (never Basic128Rsa15 / Basic256, deprecated and broken).
SECURE_POLICIES = [
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
]
DEPRECATED_URIS = (
    "http://opcfoundation.org/UA/SecurityPolicy#Basic128Rsa15",
    "http://opcfoundation.org/UA/SecurityPolicy#Basic256",
)


@dataclass
class ScadaUser(User):
    """asyncua's session user plus our role (``viewer`` .. ``admin``)."""

    scada_role: str = "viewer"
    identity: Identity | None = None


def ensure_server_certificate(directory: Path, app_uri: str, host: str) -> tuple[Path, Path]:
    """Load or create ``server-cert.der`` / ``server-key.pem`` in ``directory``.

    Regenerated when the stored certificate does not carry ``app_uri`` (the site was renamed)
    or has expired; the old pair is kept with a ``.old`` suffix.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert_p, key_p = directory / "server-cert.der", directory / "server-key.pem"
    if cert_p.exists() and key_p.exists():
        try:
            cert = x509.load_der_x509_certificate(cert_p.read_bytes())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
            if app_uri in uris and cert.not_valid_after_utc > datetime.now(UTC):
                return cert_p, key_p
            log.warning("server certificate %s does not match %s or expired; generating a new one",
                        cert_p, app_uri)
        except (ValueError, x509.ExtensionNotFound) as e:
            log.warning("server certificate %s unreadable (%s); generating a new one", cert_p, e)
        for p in (cert_p, key_p):
            p.replace(p.with_name(p.name + ".old"))
    key = cert_gen.generate_private_key()
    names = [x509.UniformResourceIdentifier(app_uri), x509.DNSName(socket.gethostname()),
             x509.DNSName("localhost")]
    if host not in ("0.0.0.0", "", "localhost"):
        names.append(x509.DNSName(host))
    cert = cert_gen.generate_self_signed_app_certificate(
        key, "SCADA OPC UA server", {"organizationName": "scada"}, names,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], days=3650,
    )
    fd = os.open(key_p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    log.info("generated OPC UA server certificate %s for %s", cert_p, app_uri)
    return cert_p, key_p


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def load_cert_file(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


class TrustList:
    """Client certificates trusted by fingerprint, from a directory re-read when it changes.

    Used as asyncua's ``certificate_validator`` (called on CreateSession with the client's
    application certificate). Part 4 §5.6.2: an untrusted certificate is refused with
    ``BadCertificateUntrusted``; an expired one with ``BadCertificateTimeInvalid``.
    """

    def __init__(self, trusted_dir: Path, rejected_dir: Path,
                 on_refused: Any = None, trust_all: bool = False):
        self.trusted_dir = trusted_dir
        self.rejected_dir = rejected_dir
        #: ``on_refused(client, outcome, reason)``: the operator API's security audit
        self.on_refused = on_refused
        self.trust_all = trust_all
        self._mtime: float = -1.0
        self._trusted: set[str] = set()
        trusted_dir.mkdir(parents=True, exist_ok=True)
        rejected_dir.mkdir(parents=True, exist_ok=True)

    def _reload(self) -> None:
        try:
            mtime = self.trusted_dir.stat().st_mtime
        except FileNotFoundError:
            self._trusted = set()
            return
        if mtime == self._mtime:
            return
        found = set()
        for p in sorted(self.trusted_dir.iterdir()):
            if p.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
                continue
            try:
                found.add(_fingerprint(load_cert_file(p).public_bytes(serialization.Encoding.DER)))
            except ValueError as e:
                log.warning("trust list: cannot read %s (%s); skipped", p, e)
        self._trusted, self._mtime = found, mtime

    def is_trusted(self, cert: x509.Certificate) -> bool:
        self._reload()
        return _fingerprint(cert.public_bytes(serialization.Encoding.DER)) in self._trusted

    def trust(self, cert_path: Path) -> Path:
        """Copy a certificate into the trust list (``scada`` tests and admin tooling)."""
        cert = load_cert_file(cert_path)
        dest = self.trusted_dir / (_fingerprint(cert.public_bytes(serialization.Encoding.DER))[:16] + ".der")
        dest.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        self._mtime = -1.0
        return dest

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        self.check(cert, getattr(app, "ApplicationUri", "") or "")

    def check(self, cert: x509.Certificate, uri: str = "") -> None:
        """Raise ``ServiceError`` (BadCertificateUntrusted / TimeInvalid) unless trusted."""
        now = datetime.now(UTC)
        if cert.not_valid_after_utc < now or cert.not_valid_before_utc > now:
            self._record(uri, "BadCertificateTimeInvalid",
                         f"client certificate of {uri or '?'} is outside its validity period")
            raise ServiceError(ua.StatusCodes.BadCertificateTimeInvalid)
        if self.trust_all or self.is_trusted(cert):
            return
        der = cert.public_bytes(serialization.Encoding.DER)
        (self.rejected_dir / (_fingerprint(der)[:16] + ".der")).write_bytes(der)
        self._record(uri, "BadCertificateUntrusted",
                     f"client certificate of {uri or '?'} ({cert.subject.rfc4514_string()}) is not in "
                     f"{self.trusted_dir}; copy it from {self.rejected_dir} to trust it")
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    def _record(self, uri: str, outcome: str, reason: str) -> None:
        ch = current_channel.get()
        via = f"opcua {ch.peer}" if ch is not None else "opcua"
        if self.on_refused is not None:
            self.on_refused(via, outcome, reason)
        else:
            log.warning("%s: %s", outcome, reason)


class SiteUserManager:
    """asyncua user manager backed by the operator API (replaces PermissiveUserManager).

    ``get_user`` is called by asyncua's ActivateSession with the decrypted user name and
    password (UserNameIdentityToken, Part 4 §7.36.4) or with neither for an anonymous token.
    The operator API audits every login, refused ones with their reason.
    """

    def __init__(self, operations: Any):
        self.ops = operations

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        ch = current_channel.get()
        via = f"opcua {ch.peer}" if ch is not None else "opcua"
        ident, _res = self.ops.authenticate(username, password, via)
        if ident is None:
            return None
        role = UserRole.Admin if ident.role == "admin" else UserRole.User
        return ScadaUser(role=role, name=ident.user, scada_role=ident.role or "viewer", identity=ident)


class PolicedInSession(PermissionRuleset):
    """Lets every request of an activated session through to :class:`GuardedSession`.

    asyncua's ``SimpleRoleRuleset`` knows only Admin/User/Anonymous and would refuse AddNodes
    silently (no audit entry) before our session sees it; our session checks our roles and
    audits each decision instead. Requests without a session are still refused by asyncua.
    """

    def check_validity(self, user: Any, action_type: Any, body: Any) -> bool:
        return True


def role_of(user: Any) -> str | None:
    """Our role of an asyncua session user (None: not logged in / refused)."""
    ident = identity_of(user)
    return ident.role if ident is not None else None


#: asyncua's internal server session (our own code, not a client)
_INTERNAL = Identity("server", "admin", None, "opcua internal")
#: a session not (yet) activated: no rights
NOBODY = Identity(None, None, frozenset(), "opcua")


def identity_of(user: Any) -> Identity | None:
    """The operator-API identity of an asyncua session user (None: not logged in)."""
    if isinstance(user, ScadaUser):
        return user.identity or Identity(user.name, user.scada_role)
    if isinstance(user, User) and user.role == UserRole.Admin and user.name is None:
        return _INTERNAL
    return None
