"""Security events over the wire (issue 15): a client certificate on the None endpoint is
ignored (Part 4 §5.6.2) while signed channels keep strict trust; refused security events are
audited with a reason and logged once at INFO/WARNING, never as ERROR lines with tracebacks."""

from __future__ import annotations

import logging

import pytest
from asyncua import Client, ua
from asyncua.crypto import security_policies as sp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scada import quality as Q
from scada.audit import AuditLog
from tests.fixtures.hmi import PASSWORDS, client_certificate


async def _code(coro) -> int:
    try:
        await coro
    except ua.UaStatusCodeError as e:
        return e.code
    return Q.Good


async def _raw(c: Client, req) -> None:
    from asyncua.ua.ua_binary import struct_from_binary

    data = await c.uaclient._send_request(req)
    struct_from_binary(ua.HistoryUpdateResponse, data).ResponseHeader.ServiceResult.check()


async def test_client_certificate_on_the_none_endpoint_is_ignored(hmi, tmp_path):
    """UaExpert and node-opcua send their application certificate even on a None channel; it
    was refused with BadCertificateUntrusted. It is not used there, so it is not checked."""
    cert, _key, uri = client_certificate(tmp_path, "uaexpert-like")
    c = Client(hmi.url, timeout=10)
    c.application_uri = uri
    der = x509.load_der_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    plain = c.uaclient.create_session

    async def create_session(params):  # what such HMIs put in CreateSession on a None channel
        params.ClientCertificate = der
        return await plain(params)

    c.uaclient.create_session = create_session
    c.set_user("op1")
    c.set_password(PASSWORDS["op1"])
    hmi.feed({"centre/cab-01/power_w": 3.0})
    async with c:
        dv = await hmi.node(c, "centre/cab-01/power_w").read_data_value()
        assert dv.Value.Value == 3.0
    assert not list((hmi.service.state_dir / "rejected").iterdir())


async def test_signed_channels_keep_strict_certificate_trust(hmi, tmp_path):
    cert, key, uri = client_certificate(tmp_path, "untrusted-hmi")
    c = Client(hmi.url, timeout=10)
    c.application_uri = uri
    await c.set_security(sp.SecurityPolicyBasic256Sha256, str(cert), str(key),
                         mode=ua.MessageSecurityMode.SignAndEncrypt)
    assert await _code(c.connect()) == Q.BadCertificateUntrusted
    c.disconnect_socket()
    audit = AuditLog.read(str(hmi.audit_path))
    assert any(e["outcome"] == "BadCertificateUntrusted" and "not in" in e["reason"] for e in audit)


@pytest.mark.parametrize("policy", [sp.SecurityPolicyBasic128Rsa15, sp.SecurityPolicyBasic256])
async def test_deprecated_policy_forced_is_refused_quietly(hmi, tmp_path, caplog, monkeypatch, policy):
    """A client that ignores the endpoint list and opens a channel with a deprecated policy."""
    cert, key, uri = client_certificate(tmp_path, "old-hmi")
    monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda eps, mode, uri: eps[-1]))
    c = Client(hmi.url, timeout=5)
    c.application_uri = uri
    caplog.set_level(logging.INFO)
    try:
        await c.set_security(policy, str(cert), str(key), mode=ua.MessageSecurityMode.SignAndEncrypt)
        with pytest.raises((ua.UaError, ConnectionError, TimeoutError)):
            await c.connect()
    finally:
        c.disconnect_socket()
    server_errors = [r for r in caplog.records if r.levelno >= logging.ERROR
                     and (r.name.startswith("asyncua.server") or r.name.startswith("scada"))]
    assert server_errors == [], [r.getMessage() for r in server_errors]
    audit = AuditLog.read(str(hmi.audit_path))
    assert any(e["action"] == "security" and e["outcome"] == "BadSecurityPolicyRejected" for e in audit), audit


async def test_denials_and_bad_logins_are_audited_not_logged_as_errors(hmi, caplog):
    caplog.set_level(logging.INFO)
    hmi.feed({"centre/cab-01/group_level": 10.0})
    for _ in range(2):  # bad password
        c = hmi.client("op1", "wrong")
        assert await _code(c.connect()) == Q.BadUserAccessDenied
        c.disconnect_socket()
    c = hmi.client("nobody", "x")  # unknown user
    assert await _code(c.connect()) == Q.BadUserAccessDenied
    c.disconnect_socket()
    async with hmi.client() as c:  # anonymous viewer: write denied, AddNodes denied
        node = hmi.node(c, "centre/cab-01/group_level")
        assert await _code(node.write_value(ua.Variant(50.0, ua.VariantType.Double))) == Q.BadUserAccessDenied
        assert await _code(c.nodes.objects.add_folder(ua.NodeId("x", 1), "1:x")) == Q.BadUserAccessDenied
        # HistoryUpdate is refused to everybody
    async with hmi.client("admin") as c:
        req = ua.HistoryUpdateRequest()
        req.Parameters = ua.HistoryUpdateParameters(HistoryUpdateDetails=[])
        assert await _code(_raw(c, req)) == Q.BadUserAccessDenied
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [f"{r.name}: {r.getMessage()}" for r in errors]
    audit = AuditLog.read(str(hmi.audit_path))
    logins = [(e["user"], e["outcome"], e.get("reason")) for e in audit if e["action"] == "login"]
    assert ("op1", "BadUserAccessDenied", "bad_password") in logins
    assert ("nobody", "BadUserAccessDenied", "unknown_user") in logins
    acts = {(e["user"], e["action"], e["outcome"]) for e in audit}
    assert ("anonymous", "tag.write", "BadUserAccessDenied") in acts
    assert ("anonymous", "address_space.edit", "BadUserAccessDenied") in acts
    assert ("admin", "history.update", "BadUserAccessDenied") in acts
    for e in audit:
        assert e.get("via", "").startswith("opcua"), e
