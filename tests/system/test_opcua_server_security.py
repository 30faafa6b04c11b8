"""Security of our OPC UA server over the wire: endpoints, certificates, passwords, lockout,
and the role matrix (viewer / operator / engineer / admin x read, write, acknowledge, shelve,
add nodes), every write and denial audited."""

from __future__ import annotations

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from scada import quality as Q
from scada.audit import AuditLog
from scada.opcua.security import DEPRECATED_URIS
from scada.operations import allows
from tests.fixtures.hmi import PASSWORDS, ROLES, client_certificate

NONE_URI = "http://opcfoundation.org/UA/SecurityPolicy#None"


async def _secure_client(hmi, tmp_path, user, password=None, name="hmi-client"):
    cert, key, uri = client_certificate(tmp_path, name)
    c = Client(hmi.url, timeout=5)
    c.application_uri = uri
    await c.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key),
                         mode=ua.MessageSecurityMode.SignAndEncrypt)
    if user:
        c.set_user(user)
        c.set_password(password if password is not None else PASSWORDS[user])
    return c, cert


async def _status_of(coro) -> int:
    try:
        await coro
    except ua.UaStatusCodeError as e:
        return e.code
    return Q.Good


async def test_endpoints_offered(hmi_secure):
    eps = await Client(hmi_secure.url, timeout=5).connect_and_get_server_endpoints()
    offered = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode.name) for e in eps}
    assert offered == {("Basic256Sha256", "Sign"), ("Basic256Sha256", "SignAndEncrypt"),
                       ("Aes128_Sha256_RsaOaep", "Sign"), ("Aes128_Sha256_RsaOaep", "SignAndEncrypt")}
    for e in eps:
        assert e.SecurityPolicyUri not in DEPRECATED_URIS
        assert {t.TokenType for t in e.UserIdentityTokens} == {ua.UserTokenType.UserName}  # no anonymous


async def test_security_none_refused_when_not_allowed(hmi_secure, monkeypatch):
    # a non-conforming client that ignores the endpoint list and opens a None channel anyway
    # (asyncua's server accepts such a channel; our session activation must refuse it)
    monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda eps, mode, uri: eps[0]))
    c = hmi_secure.client("op1")
    code = await _status_of(c.connect())
    assert code == Q.BadSecurityPolicyRejected
    c.disconnect_socket()
    assert AuditLog.read(str(hmi_secure.audit_path))[-1]["outcome"] == "BadSecurityPolicyRejected"


async def test_demo_offers_none_and_secure(hmi):
    eps = await Client(hmi.url, timeout=5).connect_and_get_server_endpoints()
    uris = {e.SecurityPolicyUri for e in eps}
    assert NONE_URI in uris and not uris & set(DEPRECATED_URIS)


async def test_untrusted_client_certificate_then_trusted(hmi_secure, tmp_path):
    c, cert = await _secure_client(hmi_secure, tmp_path, "op1")
    code = await _status_of(c.connect())
    assert code == Q.BadCertificateUntrusted
    c.disconnect_socket()
    rejected = list((hmi_secure.service.state_dir / "rejected").iterdir())
    assert len(rejected) == 1
    hmi_secure.service.trust.trust(cert)
    # same certificate: now trusted
    c = Client(hmi_secure.url, timeout=5)
    c.application_uri = "urn:scada:test:hmi-client"
    await c.set_security(SecurityPolicyBasic256Sha256, str(cert), str(tmp_path / "hmi-client.pem"),
                         mode=ua.MessageSecurityMode.SignAndEncrypt)
    c.set_user("op1")
    c.set_password(PASSWORDS["op1"])
    async with c:
        n = hmi_secure.node(c, "centre/cab-01/group_level")
        await n.write_value(ua.Variant(30.0, ua.VariantType.Double))
        assert await n.read_value() == 30.0


async def test_wrong_passwords_and_admin_name_get_nothing(hmi_secure, tmp_path):
    cert, key, uri = client_certificate(tmp_path, "hmi")
    hmi_secure.service.trust.trust(cert)
    for user, pw in (("admin", "admin"), ("admin", ""), ("Admin", "pw-admin"), ("op1", "pw-admin"),
                     ("nobody", "x")):
        c = Client(hmi_secure.url, timeout=5)
        c.application_uri = uri
        await c.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key))
        c.set_user(user)
        c.set_password(pw)
        code = await _status_of(c.connect())
        c.disconnect_socket()
        assert code == Q.BadUserAccessDenied, (user, pw, Q.name(code))
    refused = [(e["user"], e["reason"]) for e in AuditLog.read(str(hmi_secure.audit_path)) if e["action"] == "login"]
    assert refused == [("admin", "bad_password"), ("admin", "bad_password"), ("Admin", "unknown_user"),
                       ("op1", "bad_password"), ("nobody", "unknown_user")]


async def test_five_failed_logins_lock_the_account(hmi):
    for _ in range(5):
        c = hmi.client("eng1", "guess")
        assert await _status_of(c.connect()) == Q.BadUserAccessDenied
        c.disconnect_socket()
    c = hmi.client("eng1")  # the right password, but locked
    assert await _status_of(c.connect()) == Q.BadUserAccessDenied
    c.disconnect_socket()
    reasons = [e["reason"] for e in AuditLog.read(str(hmi.audit_path)) if e["action"] == "login"]
    assert reasons == ["bad_password"] * 4 + ["locked", "locked"]
    async with hmi.client("op1") as c:  # other accounts unaffected
        assert await hmi.node(c, "centre/cab-01/contactor").read_data_value(raise_on_bad_status=False)


EXPECTED = {  # role -> allowed actions of the matrix
    "viewer": {"read"},
    "operator": {"read", "tag.write", "alarm.acknowledge"},
    "engineer": {"read", "tag.write", "alarm.acknowledge", "alarm.shelve"},
    "admin": {"read", "tag.write", "alarm.acknowledge", "alarm.shelve", "address_space.edit"},
}


async def test_role_matrix(hmi):
    """Every cell of viewer/operator/engineer/admin x read/write/acknowledge/shelve/add nodes,
    on one server; each write and AddNodes attempt, allowed or denied, is audited."""
    hmi.feed({"centre/cab-01/group_level": 10.0})
    for user, role in ROLES.items():
        async with hmi.client(user) as c:
            # read
            dv = await hmi.node(c, "centre/cab-01/group_level").read_data_value()
            assert dv.StatusCode.is_good()
            ual = (await hmi.node(c, "centre/cab-01/group_level").read_attribute(
                ua.AttributeIds.UserAccessLevel)).Value.Value
            assert bool(ual & 0x02) is ("tag.write" in EXPECTED[role]) and ual & 0x01
            # write
            code = await _status_of(hmi.node(c, "centre/cab-01/group_level").write_value(
                ua.Variant(42.0, ua.VariantType.Double)))
            assert code == (Q.Good if "tag.write" in EXPECTED[role] else Q.BadUserAccessDenied), (user, Q.name(code))
            # add nodes
            code = await _status_of(c.nodes.objects.add_folder(ua.NodeId(f"test-{user}", 1), f"1:test-{user}"))
            assert code == (Q.Good if "address_space.edit" in EXPECTED[role] else Q.BadUserAccessDenied), \
                (user, Q.name(code))
        # acknowledge / shelve: the operator API checks the same table (scada.operations.roles)
        for action in ("alarm.acknowledge", "alarm.shelve", "read", "tag.write", "address_space.edit"):
            assert allows(role, action) is (action in EXPECTED[role])
        audit = [e for e in AuditLog.read(str(hmi.audit_path))
                 if e["action"] in ("tag.write", "address_space.edit") and e["user"] == user]
        assert [(e["action"], e["outcome"] == "Good", e["role"]) for e in audit] == [
            ("tag.write", "tag.write" in EXPECTED[role], role),
            ("address_space.edit", "address_space.edit" in EXPECTED[role], role)]


async def test_sessions_bounded(tmp_path):
    """max_sessions bounds connections and activated sessions (asyncua refuses the TCP
    connection itself past max_connections, which we set to the same figure)."""
    from tests.fixtures.hmi import start_hmi

    h = await start_hmi(tmp_path, extra="max_sessions: 2")
    c1, c2, c3 = h.client(), h.client(), h.client()
    try:
        await c1.connect()
        await c2.connect()
        try:
            await c3.connect()
            refused = None
        except ua.UaStatusCodeError as e:
            refused = ua.StatusCode(e.code).name
        except ConnectionError:
            refused = "connection refused"
        c3.disconnect_socket()
        assert refused in ("BadTooManySessions", "connection refused")
        await c1.disconnect()
        async with h.client() as c:  # a slot comes back
            assert await h.node(c, "centre/cab-01/contactor").read_data_value(raise_on_bad_status=False)
    finally:
        for c in (c1, c2):
            try:
                await c.disconnect()
            except (ConnectionError, ua.UaError):
                pass
        await h.runtime.stop()


async def test_demo_users_created_once_and_usable(tmp_path):
    from tests.fixtures.hmi import start_hmi

    h = await start_hmi(tmp_path, extra="demo_users: true")
    try:
        f = h.runtime.operations.demo_users_file
        assert f.name == "demo-users.txt"
        assert str(f) in h.service.connect_info()
        assert oct(f.stat().st_mode & 0o777) == "0o600"
        accounts = {ln.split()[0]: ln.split()[2] for ln in f.read_text().splitlines() if not ln.startswith("#")}
        assert set(accounts) == {"viewer", "operator", "engineer"}
        async with h.client("operator", accounts["operator"]) as c:
            await h.node(c, "centre/cab-01/group_level").write_value(ua.Variant(5.0, ua.VariantType.Double))
        assert h.writes == [("centre/cab-01/group_level", 5.0)]
    finally:
        await h.runtime.stop()


async def test_subscriptions_and_monitored_items_bounded(tmp_path):
    from tests.fixtures.hmi import start_hmi

    h = await start_hmi(tmp_path, extra="max_subscriptions_per_session: 2\nmax_monitored_items_per_subscription: 3")
    try:
        async with h.client() as c:
            s1 = await c.create_subscription(10, None)  # 10 ms asked: revised to the 50 ms floor
            await c.create_subscription(100, None)
            assert await _status_of(c.create_subscription(100, None)) == ua.StatusCodes.BadTooManySubscriptions
            nodes = [h.node(c, f"centre/cab-01/lum-0{n}/level") for n in (1, 2, 3)]
            await s1.subscribe_data_change(nodes)
            code = await _status_of(s1.subscribe_data_change(h.node(c, "centre/cab-01/power_w")))
            assert code == ua.StatusCodes.BadTooManyMonitoredItems
            subs = h.service.server.iserver.subscription_service.subscriptions.values()
            assert min(s.data.RevisedPublishingInterval for s in subs) == 50.0
    finally:
        await h.runtime.stop()
