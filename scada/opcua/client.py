"""The client side of the server's operator methods over OPC UA (the CLI's actions).

Every state-changing CLI command (``scada ack``, ``comment``, ``shelve``, ``out-of-service``,
``schedule override set/cancel``) connects to the running server as the authenticated user and
calls one method; the server's operator API checks the role matrix and the user's areas, and
audits the action with that identity (never a name the command line merely claims).
"""

from __future__ import annotations

from typing import Any

from asyncua import Client, ua

from .alarms import ALARMS_OBJECT, SUFFIX


class ClientError(Exception):
    """An action over OPC UA failed; the message names the alarm and the server's answer."""


DEFAULT_NS = "urn:scada:streetlight:tags"


async def _ns(client: Client, uri: str) -> int:
    arr = await client.get_namespace_array()
    if uri in arr:
        return arr.index(uri)
    raise ClientError(f"the server has no namespace {uri!r} (namespaces: {arr}); "
                      f"pass the site's opcua.namespace_uri")


async def act(client: Client, ns: int, what: str, **kw: Any) -> str:
    """Call one A&C method on a connected client (the server checks the caller's role):
    ``acknowledge`` / ``unshelve`` (alarm_id, comment), ``shelve`` (alarm_id, comment,
    duration s or None = one-shot), ``out_of_service`` (device, oos, comment)."""
    comment = ua.LocalizedText(kw.get("comment") or "")
    if what in ("set_override", "cancel_override"):
        node = client.get_node(ua.NodeId("#Scada", ns))
        S = ua.VariantType.String
        if what == "set_override":
            method = ua.NodeId("#Scada.SetOverride", ns)
            args = [ua.Variant(float(kw["level"]), ua.VariantType.Double),
                    ua.Variant(float(kw["minutes"]), ua.VariantType.Double),
                    ua.Variant(kw.get("reason") or "", S),
                    ua.Variant(",".join(kw.get("areas") or ()), S),
                    ua.Variant(",".join(kw.get("devices") or ()), S),
                    ua.Variant(",".join(kw.get("groups") or ()), S)]
            target = ",".join([*(kw.get("areas") or ()), *(kw.get("devices") or ()), *(kw.get("groups") or ())]) \
                or "everything"
        else:
            method = ua.NodeId("#Scada.CancelOverride", ns)
            args = [ua.Variant(kw["override_id"], S)]
            target = kw["override_id"]
    elif what == "out_of_service":
        node = client.get_node(ua.NodeId(ALARMS_OBJECT, ns))
        args = [ua.Variant(kw["device"], ua.VariantType.String),
                ua.Variant(bool(kw["oos"]), ua.VariantType.Boolean),
                ua.Variant(kw.get("comment") or "", ua.VariantType.String)]
        method = ua.NodeId(ALARMS_OBJECT + ".SetOutOfService", ns)
        target = kw["device"]
    else:
        target = kw["alarm_id"]
        node = client.get_node(ua.NodeId(target + SUFFIX, ns))
        if what == "acknowledge":
            method = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
            args = [ua.Variant(b"", ua.VariantType.ByteString), comment]
        elif what == "shelve" and kw.get("duration"):
            method = ua.NodeId(ua.ObjectIds.AlarmConditionType_ShelvingState_TimedShelve)
            args = [ua.Variant(float(kw["duration"]) * 1000.0, ua.VariantType.Double), comment]
        elif what == "shelve":
            method = ua.NodeId(ua.ObjectIds.AlarmConditionType_ShelvingState_OneShotShelve)
            args = [comment]
        elif what == "unshelve":
            method = ua.NodeId(ua.ObjectIds.AlarmConditionType_ShelvingState_Unshelve)
            args = [comment]
        elif what == "comment":
            method = ua.NodeId(ua.ObjectIds.ConditionType_AddComment)
            args = [ua.Variant(b"", ua.VariantType.ByteString), comment]
        else:
            raise ClientError(f"unknown action {what!r}")
    try:
        res = await node.call_method(method, *args)
    except ua.UaStatusCodeError as e:
        name = getattr(ua.StatusCode(e.code), "name", None) or f"0x{e.code:08X}"
        hint = {
            "BadUserAccessDenied": "your role does not allow this (log in with --user)",
            "BadNodeIdInvalid": "no such alarm instance on the server (see `scada alarms`)",
            "BadNodeIdUnknown": "no such alarm or device",
            "BadConditionBranchAlreadyAcked": "already acknowledged",
            "BadConditionNotShelved": "the alarm is not shelved",
            "BadNoEntryExists": "no such override (see `scada schedule override list`)",
            "BadOutOfRange": "level must be 0..100 % and the duration 1 min .. 7 days",
            "BadMethodInvalid": "this server does not offer that method (older version?)",
        }.get(name, "")
        raise ClientError(f"{what.replace('_', ' ')} {target}: {name}{': ' + hint if hint else ''}") from e
    if what == "set_override":
        return res[1] if isinstance(res, list) else str(res)
    if what == "cancel_override":
        return res[0] if isinstance(res, list) else str(res)
    return f"{what.replace('_', ' ')} {target}: done"


async def call_action(endpoint: str, user: str | None, password: str | None, what: str,
                      namespace_uri: str = DEFAULT_NS, **kw: Any) -> str:
    """Connect (no message security), call :func:`act` as ``user``, disconnect."""
    client = Client(endpoint, timeout=10)
    client.session_timeout = 60_000  # what servers grant anyway; avoids a revision warning
    if user:
        client.set_user(user)
        client.set_password(password or "")
    try:
        await client.connect()
    except (OSError, TimeoutError, ua.UaError) as e:
        raise ClientError(f"cannot connect to {endpoint}: {e} (is `scada run`/`scada demo` running?)") from e
    try:
        return await act(client, await _ns(client, namespace_uri), what, **kw)
    finally:
        await client.disconnect()
