"""TLS and username/password against a real Mosquitto (TLS listener, password file, no
anonymous access): the driver connects with the profile's connection options; a wrong password
is refused by the broker and the tags stay Bad."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from drivers.mqtt.client import MqttConnection, TlsSettings
from scada import quality as Q
from scada.loader import load_site
from scada.runtime import Runtime
from tests.fixtures.mqtt import REPO, eventually

pytestmark = pytest.mark.system


def make_pki(d):
    """A throw-away CA and a server certificate for 127.0.0.1."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                                     serialization.NoEncryption()))


def site_yaml(tmp_path, port, password):
    return f"""
site: {{name: tls, latitude: 47.3, longitude: 5.0}}
areas: [{{id: centre}}]
include: [{REPO}/config/profiles/dali-gateway.yaml, {REPO}/config/profiles/luminaire-dali.yaml]
devices:
  - id: gw-t
    profile: dali-gateway
    area: centre
    connection: {{broker: "127.0.0.1:{port}", gateway: gw-t, tls: true, ca_file: "{tmp_path}/ca.pem",
                  username: scada, password: "{password}", client_id: scada-tls-{password}}}
    children: [{{profile: luminaire-dali, id: "lum-{{n}}", count: 2}}]
"""


@pytest.fixture
def tls_broker(tmp_path, mosquitto_factory):
    """Mosquitto with a TLS listener, a password file and no anonymous access."""
    make_pki(tmp_path)
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "scada", "right"], check=True,
                   capture_output=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "gateway", "gw-secret"], check=True,
                   capture_output=True)
    return mosquitto_factory(anonymous=False, extra=(
        f"password_file {pw}\ncafile {tmp_path}/ca.pem\ncertfile {tmp_path}/server.pem\n"
        f"keyfile {tmp_path}/server.key\n"))


@pytest.mark.parametrize("password", ["right", "wrong"])
async def test_tls_with_username_and_password(tmp_path, tls_broker, stepped_clock, password):
    broker = tls_broker
    (tmp_path / "site.yaml").write_text(site_yaml(tmp_path, broker.port, password), encoding="utf-8")
    site = load_site(tmp_path / "site.yaml")
    gw = MqttConnection(host="127.0.0.1", port=broker.port, client_id="gw-t", username="gateway",
                        password="gw-secret", tls=TlsSettings(ca_file=str(tmp_path / "ca.pem")))
    rt = Runtime(site, stepped_clock)
    rt.load_drivers(["mqtt"])
    try:
        gw.start()
        assert await gw.wait_connected(10)
        gw.publish("dali/gw-t/status", b'{"online": true, "lines_ok": true}', 1, retain=True)
        gw.publish("dali/gw-t/0/1/state", b'{"ts": 1767225600, "level": 12.5, "power": 7.25}', 1)
        await rt.start()
        drv = rt.drivers["mqtt"]
        await eventually(lambda: drv.connection("centre/gw-t") is not None, what="driver started")
        conn = drv.connection("centre/gw-t")
        if password == "right":
            assert await conn.wait_connected(10)
            gw.publish("dali/gw-t/0/1/state", b'{"ts": 1767225601, "level": 13.5, "power": 7.5}', 1)
            await eventually(lambda: rt.tagdb.read("centre/gw-t/lum-2/level").value == 13.5,
                             what="state over TLS")
            assert rt.tagdb.read("centre/gw-t/online").value is True
        else:
            assert not await conn.wait_connected(1.5)  # CONNACK: not authorised
            assert rt.tagdb.read("centre/gw-t/lum-2/level").quality == Q.BadWaitingForInitialData
            assert conn.stats["connects"] == 0
    finally:
        await rt.stop()
        await gw.aclose()
