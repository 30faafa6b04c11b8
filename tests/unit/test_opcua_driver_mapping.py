"""Pure mapping of the OPC UA driver: profile -> nodes, DataValue -> sample, value -> Variant."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from asyncua import ua
from pydantic import ValidationError

from drivers.opcua.mapping import (
    TRAFFIC_NAMESPACE,
    Connection,
    MappingError,
    NodeRef,
    PointSource,
    ProfileOptions,
    ValueRejected,
    browse_path,
    decode,
    device_items,
    expand_template,
    posix,
    resolve_node,
    variant,
)
from scada import quality as Q
from scada.site import ProfileConfig

NS = ["http://opcfoundation.org/UA/", "urn:some:server", TRAFFIC_NAMESPACE]
PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles" / "junction-opcua.yaml"


def test_template_expansion_and_unknown_placeholders():
    assert expand_template("{device}.SignalGroups.SG{index:02d}", "J7", 3) == "J7.SignalGroups.SG03"
    with pytest.raises(MappingError, match="not a child device"):
        expand_template("{device}.L{index}", "J7", None)
    with pytest.raises(ValidationError, match=r"unknown placeholder \{junction\}"):
        PointSource.model_validate({"node": "{junction}.Mode"})
    with pytest.raises(ValidationError, match="exactly one of"):
        PointSource.model_validate({"node": "a", "browse_path": "b"})
    with pytest.raises(ValidationError, match="exactly one of"):
        PointSource.model_validate({})


def test_resolve_node_forms():
    ref = NodeRef("node", "J1.Status.Mode", TRAFFIC_NAMESPACE)
    assert resolve_node(ref, NS) == ua.NodeId("J1.Status.Mode", 2, ua.NodeIdType.String)
    assert resolve_node(NodeRef("node", "ns=1;s=X"), NS) == ua.NodeId("X", 1, ua.NodeIdType.String)
    assert resolve_node(NodeRef("node", "i=2258"), NS) == ua.NodeId(2258, 0)
    nid = resolve_node(NodeRef("node", f"nsu={TRAFFIC_NAMESPACE};s=J1.Plan"), NS)
    assert (nid.Identifier, nid.NamespaceIndex) == ("J1.Plan", 2)
    with pytest.raises(MappingError, match="no namespace"):
        resolve_node(NodeRef("node", "J1.Status.Mode"), NS)
    with pytest.raises(MappingError, match="does not declare namespace 'urn:absent'"):
        resolve_node(NodeRef("node", "J1", "urn:absent"), NS)


def test_browse_path_elements():
    bp = browse_path(NodeRef("browse_path", "J1/Status/0:Mode", TRAFFIC_NAMESPACE), NS)
    assert bp.StartingNode == ua.NodeId(ua.ObjectIds.ObjectsFolder)
    names = [(e.TargetName.Name, e.TargetName.NamespaceIndex) for e in bp.RelativePath.Elements]
    assert names == [("J1", 2), ("Status", 2), ("Mode", 0)]
    with pytest.raises(MappingError, match="has no namespace"):
        browse_path(NodeRef("browse_path", "J1/Mode"), NS)
    with pytest.raises(MappingError, match="empty element"):
        browse_path(NodeRef("browse_path", "J1//Mode", TRAFFIC_NAMESPACE), NS)


def _dv(value, vt=None, status=Q.Good, src=None, srv=None):
    v = ua.Variant(value, vt) if vt is not None else ua.Variant(value)
    return ua.DataValue(v, StatusCode=ua.StatusCode(status), SourceTimestamp=src, ServerTimestamp=srv)


def test_decode_keeps_status_and_source_timestamp():
    src = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    srv = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)
    d = decode(_dv(3, ua.VariantType.Int32, Q.UncertainLastUsableValue, src, srv), "int")
    assert (d.value, d.status, d.source_ts) == (3.0, Q.UncertainLastUsableValue, src.timestamp())
    # no source timestamp: the server's, never a made-up one
    assert decode(_dv(True, src=None, srv=srv), "bool").source_ts == srv.timestamp()
    assert decode(_dv(True), "bool").source_ts is None
    assert decode(_dv(False), "bool").value == 0.0
    assert decode(_dv(2.5, ua.VariantType.Double), "float").value == 2.5
    assert decode(_dv("plan A"), "string").value == "plan A"
    # a bad code without a value: the last value is kept by the caller
    bad = ua.DataValue(ua.Variant(None), StatusCode=ua.StatusCode(Q.BadSensorFailure))
    d = decode(bad, "float")
    assert d.value is None and d.status == Q.BadSensorFailure


def test_decode_rejects_what_does_not_fit():
    with pytest.raises(ValueRejected, match="expected a number"):
        decode(_dv("x"), "float")
    with pytest.raises(ValueRejected, match="expected an integer"):
        decode(_dv(2.5, ua.VariantType.Double), "int")
    with pytest.raises(ValueRejected, match="scalar"):
        decode(_dv([1, 2], ua.VariantType.Int32), "int")
    with pytest.raises(ValueRejected, match="Good status with no value"):
        decode(ua.DataValue(ua.Variant(None)), "int")


def test_posix_of_naive_and_null_datetimes():
    assert posix(datetime(2026, 1, 1)) == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert posix(datetime(1601, 1, 1)) is None
    assert posix(None) is None


def test_variant_for_writes():
    assert variant(True, "Boolean") == ua.Variant(True, ua.VariantType.Boolean)
    assert variant(3, "Int32") == ua.Variant(3, ua.VariantType.Int32)
    assert variant(3.0, "UInt16") == ua.Variant(3, ua.VariantType.UInt16)
    assert variant(1, "Double") == ua.Variant(1.0, ua.VariantType.Double)
    with pytest.raises(ValueError, match="expected a bool"):
        variant(1, "Boolean")
    with pytest.raises(ValueError, match="outside the Byte range"):
        variant(300, "Byte")
    with pytest.raises(ValueError, match="integer"):
        variant(2.5, "Int32")


def test_connection_validation_names_the_fix():
    ok = Connection.model_validate({"endpoint": "opc.tcp://10.0.0.7:4840/j"})
    assert ok.security_policy == "None" and ok.mode == "None"
    with pytest.raises(ValidationError, match=r"opc\.tcp://host:port"):
        Connection.model_validate({"endpoint": "http://10.0.0.7/j"})
    with pytest.raises(ValidationError, match="use both 'None'"):
        Connection.model_validate({"endpoint": "opc.tcp://h:1", "security_policy": "Basic256Sha256"})
    with pytest.raises(ValidationError, match="needs 'certificate' and 'private_key'"):
        Connection.model_validate({"endpoint": "opc.tcp://h:1", "security_policy": "Basic256Sha256",
                                   "mode": "SignAndEncrypt"})
    with pytest.raises(ValidationError, match="Input should be 'None', 'Basic256Sha256'"):
        Connection.model_validate({"endpoint": "opc.tcp://h:1", "security_policy": "Basic128Rsa15",
                                   "mode": "Sign"})
    with pytest.raises(ValidationError, match="without 'username'"):
        Connection.model_validate({"endpoint": "opc.tcp://h:1", "password": "x"})


def test_profile_options_keepalive_and_lifetime():
    o = ProfileOptions(publishing_interval_ms=1000, keepalive_count=5, lifetime_count=60)
    assert o.keepalive_s == 5.0 and o.dead_after_s == 10.0
    with pytest.raises(ValidationError, match=r"Part 4 §5.13.2"):
        ProfileOptions(keepalive_count=10, lifetime_count=20)


@pytest.mark.parametrize(("name", "groups"), [("junction-opcua", 8), ("junction-opcua-4", 4),
                                              ("junction-opcua-12", 12)])
def test_shipped_profiles_expand(name, groups):
    raw = yaml.safe_load(PROFILES.read_text(encoding="utf-8"))["profiles"][name]
    prof = ProfileConfig.model_validate(raw)
    opts = ProfileOptions.model_validate(prof.options)
    items = device_items("centre/j-1", "J1", None, 100, prof.points, opts)
    assert len(items) == 14 + 4 * groups
    by = {i.point: i for i in items}
    assert by["mode"].ref == NodeRef("node", "J1.Status.Mode", TRAFFIC_NAMESPACE)
    assert by["mode"].tag == 100
    assert by[f"sg{groups:02d}_state"].ref.text == f"J1.SignalGroups.SG{groups:02d}.State"
    assert by["plan_cmd"].variant_type == "Int32"
    assert by["force_flash_cmd"].variant_type == "Boolean"
    assert by["reset_cmd"].call_method == NodeRef("node", "J1.ResetFaults", TRAFFIC_NAMESPACE)
    assert by["reset_cmd"].call_pass_value is False
    assert by["cycle_counter"].variant_type == "UInt32"
    # keep-alive that holds under load (documented): 5 s, dead after 10 s, probe every 10 s
    assert opts.keepalive_s == 5.0 and opts.dead_after_s == 10.0 and opts.watchdog_s == 10.0


def test_site_file_errors_name_line_and_fix(tmp_path):
    """The loader validates opcua parts with the driver's models: every error at once, with
    file:line and what to write instead."""
    from scada.errors import ConfigError
    from scada.loader import load_site
    from tests.fixtures.opcua import junction_profiles, write_site

    profiles = junction_profiles()
    profiles["junction-opcua-4"]["points"][1]["source"] = {"node": "{junction}.Status.Plan"}
    profiles["junction-opcua-4"]["options"]["lifetime_count"] = 4
    site = write_site(tmp_path, [
        {"id": "j-1", "profile": "junction-opcua-4", "area": "centre",
         "connection": {"endpoint": "http://127.0.0.1:4840"}},
    ], profiles=profiles)
    with pytest.raises(ConfigError) as ei:
        load_site(str(site))
    text = str(ei.value)
    assert "unknown placeholder {junction}" in text
    assert "opc.tcp://host:port" in text
    assert "lifetime_count 4 < 3 x keepalive_count" in text
    assert "site.yaml:" in text
