"""The driver toward secured controllers: Basic256Sha256 / Aes128_Sha256_RsaOaep with Sign and
SignAndEncrypt, a pinned server certificate, username/password (wrong ones refused)."""

from __future__ import annotations

import pytest
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from scada import quality as Q
from simulators.traffic import server_certificate_path
from tests.conftest import free_port
from tests.fixtures.opcua import endpoint, traffic_rig, wait_until, write_site

pytestmark = pytest.mark.system


async def _client_cert(tmp_path):
    cert, key = tmp_path / "client-cert.der", tmp_path / "client-key.pem"
    await setup_self_signed_certificate(
        key, cert, "urn:city-scada:driver:opcua", "localhost",
        [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "city-scada driver"},
    )
    return str(cert), str(key)


async def test_secure_sessions_with_pinned_certificate_and_users(tmp_path, stepped_clock):
    cert, key = await _client_cert(tmp_path)
    port = free_port()
    url = endpoint(port)
    pinned = str(server_certificate_path(tmp_path / "state", url))
    base = {"endpoint": url, "certificate": cert, "private_key": key, "server_certificate": pinned}
    site = write_site(tmp_path, [
        {"id": "j-enc", "profile": "junction-opcua-4", "area": "centre",
         "connection": {**base, "security_policy": "Basic256Sha256", "mode": "SignAndEncrypt",
                        "username": "scada", "password": "s3cret"}},
        {"id": "j-sign", "profile": "junction-opcua-4", "area": "centre",
         "connection": {**base, "security_policy": "Aes128_Sha256_RsaOaep", "mode": "Sign",
                        "username": "scada", "password": "s3cret"}},
        {"id": "j-wrongpw", "profile": "junction-opcua-4", "area": "north",
         "connection": {**base, "security_policy": "Basic256Sha256", "mode": "SignAndEncrypt",
                        "username": "scada2", "password": "guess"}},
        # pinned to another certificate (an impostor server would present this one)
        {"id": "j-wrongpin", "profile": "junction-opcua-4", "area": "north",
         "connection": {**base, "server_certificate": cert, "security_policy": "Basic256Sha256",
                        "mode": "SignAndEncrypt", "username": "scada", "password": "s3cret"}},
    ])
    # the simulator only knows the password of scada2 as written in ITS config: make it differ
    from scada.loader import load_site
    from simulators.traffic import serve_site

    sim_site = load_site(str(site))
    for d in sim_site.by_protocol()["opcua"]:
        if d.id == "j-wrongpw":
            d.connection["password"] = "the-real-one"
    sim = await serve_site(sim_site, stepped_clock, sim_site.by_protocol()["opcua"])
    try:
        async with traffic_rig(site, stepped_clock, simulate=[], connect=False) as rig:
            # deadlines only stop a hang: RSA handshakes and the driver's own 10 s connect and
            # request timeouts take longer on a busy machine (issue 15)
            await wait_until(lambda: rig.read("centre/j-enc/mode").quality == Q.Good, within=60,
                             what="SignAndEncrypt session Good")
            await wait_until(lambda: rig.read("centre/j-sign/mode").quality == Q.Good, within=60,
                             what="Sign session Good")
            assert await rig.runtime.write("centre/j-enc/plan_cmd", 2) == Q.Good
            assert sim.model("centre/j-enc").plan_request == 2
            # the failure is recorded before the device's tags are marked: wait for both
            await wait_until(lambda: "north/j-wrongpw" in rig.driver.failures()
                             and rig.read("north/j-wrongpw/mode").quality == Q.BadCommunicationError,
                             within=60, what="refused login")
            assert "BadUserAccessDenied" in rig.driver.failures()["north/j-wrongpw"]
            # the impostor check: the real server cannot decrypt what was encrypted for the pin
            await wait_until(lambda: rig.read("north/j-wrongpin/mode").quality == Q.BadCommunicationError,
                             within=60, what="wrong pin refused")
            assert "north/j-wrongpin" in rig.driver.failures()
            assert len(rig.driver.sessions) == 4  # different security/users: separate sessions
    finally:
        await sim.aclose()
