"""The operator API (scada.operations): the role matrix as data, areas as tenants, validation,
status codes and one audit record per action with the caller's identity. No sockets: a Runtime
with the alarm service on a stepped clock."""

from __future__ import annotations

import pytest

from scada import quality as Q
from scada.alarms import model as M
from scada.audit import AuditLog
from scada.loader import load_site
from scada.operations import SERVER, Identity
from scada.operations import roles as R
from scada.runtime import Runtime
from scada.tags import Batch
from tests.fixtures.alarms import write_site

#: the policy, written independently of the table (a change to either must be deliberate)
_WO = {"wo.create", "wo.citizen", "wo.transition", "wo.assign", "wo.field", "procedure.step"}
EXPECTED = {
    "viewer": {"read"},
    "agent": {"read", "wo.field"},
    "operator": {"read", "tag.write", "alarm.acknowledge", "alarm.comment"} | _WO,
    "engineer": {"read", "tag.write", "alarm.acknowledge", "alarm.comment", "alarm.shelve",
                 "device.out_of_service", "schedule.override", "gis.import"} | _WO,
    "admin": {"read", "tag.write", "alarm.acknowledge", "alarm.comment", "alarm.shelve",
              "device.out_of_service", "schedule.override", "gis.import", "address_space.edit"} | _WO,
}


EXPECTED["citizen-app"] = {"wo.citizen"}  # a registered Open311 client app: citizen reports only


@pytest.mark.parametrize("role", [*R.ROLES, *R.SERVICE_ROLES])
@pytest.mark.parametrize("action", [a.name for a in R.ACTIONS])
def test_role_matrix_cell(role, action):
    assert R.allows(role, action) is (action in EXPECTED[role])


def test_nobody_has_history_update_and_unknown_roles_have_nothing():
    for a in R.ACTIONS:
        assert not R.allows(None, a.name) and not R.allows("root", a.name)
    assert not any(R.allows(r, "history.update") for r in R.ROLES)
    with pytest.raises(ValueError, match="unknown action 'delete'"):
        R.allows("admin", "delete")


def test_identity_areas():
    north = Identity("n", "operator", frozenset({"north"}))
    assert north.sees("north/cab-2/power_w") and north.sees("north")
    assert not north.sees("centre/cab-1") and not north.sees("_system/server/tags")
    assert north.sees("_schedules/north/override_level") and not north.sees("_schedules/centre/x")
    assert Identity("a", "admin").sees("anything/at/all")


@pytest.fixture
async def rt(tmp_path, stepped_clock):
    site = load_site(write_site(tmp_path, nlum=3), validate_drivers=False)
    rt = Runtime(site, stepped_clock)
    rt.load_services(only=["alarms"])
    db = rt.tagdb
    vals = {"centre/cab-1/comm_ok": 1.0, "centre/cab-1/contactor": 1.0, "north/cab-2/comm_ok": 1.0,
            "north/cab-2/contactor": 1.0, "centre/cab-1/lum-01/lamp_failure": 0.0,
            "north/cab-2/lum-01/lamp_failure": 0.0}
    db.apply(Batch.of([db.index(p) for p in vals], list(vals.values()), Q.Good, stepped_clock.time()))
    db.apply(Batch.of([db.index("centre/cab-1/lum-01/lamp_failure"), db.index("north/cab-2/lum-01/lamp_failure")],
                      [1.0, 1.0], Q.Good, stepped_clock.time()))
    yield rt
    rt.operations.close()


async def test_acknowledge_checks_role_and_area_and_audits_every_attempt(rt):
    ops, engine = rt.operations, rt.services["alarms"].engine
    centre, north = "centre/cab-1/lum-01/lamp_failure", "north/cab-2/lum-01/lamp_failure"
    viewer = Identity(None, "viewer", None, "test")
    olga = Identity("olga", "operator", None, "test")
    nadia = Identity("nadia", "operator", frozenset({"north"}), "test")
    out = await ops.acknowledge(viewer, centre, "x")
    assert out.status == Q.BadUserAccessDenied and "operator" in out.message
    out = await ops.acknowledge(nadia, centre, "x")
    assert out.status == Q.BadUserAccessDenied and "north" in out.message
    assert engine.view(engine.find(centre)).state == M.UNACK_ACTIVE
    assert (await ops.acknowledge(nadia, north, "crew")).ok
    assert (await ops.acknowledge(olga, centre, "crew")).ok
    again = await ops.acknowledge(olga, centre)
    assert again.status == Q.BadConditionBranchAlreadyAcked
    unknown = await ops.acknowledge(olga, "centre/nope/x")
    assert unknown.status == Q.BadNodeIdUnknown
    log = [(e["user"], e["action"], e["target"], e["outcome"], e.get("reason"))
           for e in AuditLog.read(ops.audit.path)]
    assert log == [
        ("anonymous", "alarm.acknowledge", centre, "BadUserAccessDenied", None),
        ("nadia", "alarm.acknowledge", centre, "BadUserAccessDenied", "area"),
        ("nadia", "alarm.acknowledge", north, "Good", None),
        ("olga", "alarm.acknowledge", centre, "Good", None),
        ("olga", "alarm.acknowledge", centre, "BadConditionBranchAlreadyAcked", None),
        ("olga", "alarm.acknowledge", "centre/nope/x", "BadNodeIdUnknown", None),
    ]
    assert all(e["via"] == "test" for e in AuditLog.read(ops.audit.path))


async def test_shelve_needs_a_reason_and_a_positive_time(rt):
    ops = rt.operations
    eve = Identity("eve", "engineer")
    aid = "centre/cab-1/lum-01/lamp_failure"
    assert (await ops.shelve(Identity("olga", "operator"), aid, "x", 60)).status == Q.BadUserAccessDenied
    assert (await ops.shelve(eve, aid, "", 60)).status == Q.BadInvalidArgument
    assert (await ops.shelve(eve, aid, "ordered", -5)).status == Q.BadShelvingTimeOutOfRange
    assert (await ops.shelve(eve, aid, "ordered", 600)).ok
    assert (await ops.unshelve(eve, aid)).ok
    assert (await ops.unshelve(eve, aid)).status == Q.BadConditionNotShelved


async def test_out_of_service_and_writes(rt):
    ops, db = rt.operations, rt.tagdb
    eve = Identity("eve", "engineer", frozenset({"north"}))
    assert (await ops.set_out_of_service(eve, "centre/cab-1", True, "works")).status == Q.BadUserAccessDenied
    assert (await ops.set_out_of_service(eve, "north/nope", True, "works")).status == Q.BadNodeIdUnknown
    assert (await ops.set_out_of_service(eve, "north/cab-2", True, "works")).ok
    assert db.read("north/cab-2/power_w").quality == Q.BadOutOfService
    out = await ops.write(SERVER, "north/cab-2/contactor_cmd", True)
    assert out.status == Q.BadOutOfService
    assert (await ops.write(Identity("v", "viewer"), "north/cab-2/contactor_cmd", True)).status == \
        Q.BadUserAccessDenied
    assert (await ops.write(SERVER, "north/cab-2/nope", 1)).status == Q.BadNodeIdUnknown


async def test_login_lockout_is_shared_and_audited(rt):
    ops = rt.operations
    ident, res = ops.authenticate(None, None, "web 10.0.0.9")
    assert ident is not None and ident.role == "viewer" and ident.via == "web 10.0.0.9"
    ident, res = ops.authenticate("ghost", "x", "opcua 10.0.0.7:4000")
    assert ident is None and res.reason == "unknown_user"
    logins = [(e["user"], e["outcome"], e.get("reason"), e["via"]) for e in AuditLog.read(ops.audit.path)]
    assert logins == [("ghost", "BadUserAccessDenied", "unknown_user", "opcua 10.0.0.7:4000")]
