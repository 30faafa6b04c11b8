"""OPC UA client commands: ``scada tags``, ``scada watch``, ``scada write``, ``scada user add``.

They talk to any of our servers (the SCADA server, or a junction simulator) with asyncua.
Matching a pattern never walks a city's 200,000 nodes: against our SCADA server the client
calls the server-side ``Scada.FindTags(pattern, max)`` method; against other servers it
browses by the tag-path structure, descending only into children whose names can match the
pattern's next segment, with a node budget.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4840"
DEFAULT_NAMESPACE = "urn:scada:streetlight:tags"
POLICIES = ("None", "Basic256Sha256", "Aes128_Sha256_RsaOaep")
BROWSE_BUDGET = 20_000


def register(main: click.Group) -> None:
    """Add this module's commands to the main group."""
    main.add_command(tags)
    main.add_command(watch)
    main.add_command(write)
    main.add_command(user)


def _connection_options(f):
    opts = [
        click.option("--endpoint", default=None,
                     help=f"Server endpoint URL [default: the --site file's opcua port, else {DEFAULT_ENDPOINT}]."),
        click.option("--site", "site_file", type=click.Path(dir_okay=False), default=None,
                     help="Take the endpoint from this site file (opcua: host and port)."),
        click.option("--user", "username", default=None, help="User name (default: anonymous)."),
        click.option("--password-file", "password_file", type=click.Path(dir_okay=False), default=None,
                     help="File holding the password (one line, or the demo's 'user role password' "
                          "lines); else env SCADA_OPCUA_PASSWORD; else a prompt. Never on the command line."),
        click.option("--policy", type=click.Choice(POLICIES), default="None", show_default=True,
                     help="Security policy of the secure channel."),
        click.option("--mode", type=click.Choice(["Sign", "SignAndEncrypt"]), default="SignAndEncrypt",
                     show_default=True, help="Message security mode (with a policy other than None)."),
        click.option("--cert", type=click.Path(dir_okay=False), default=None,
                     help="Client certificate (DER/PEM); generated in ~/.scada/opcua-client if omitted."),
        click.option("--key", type=click.Path(dir_okay=False), default=None, help="Client private key (PEM)."),
        click.option("--namespace", default=DEFAULT_NAMESPACE, show_default=True,
                     help="Namespace URI of the tag nodes."),
        click.option("--timeout", default=10.0, show_default=True, help="Request timeout (s)."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


class ClientError(click.ClickException):
    pass


def _client_cert(cert: str | None, key: str | None) -> tuple[str, str, str]:
    """Return (cert, key, application uri); generate a self-signed pair on first use."""
    if cert and key:
        from asyncua.crypto import uacrypto  # noqa: F401 - fail early if cryptography is missing
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        data = Path(cert).read_bytes()
        c = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        try:
            san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        return cert, key, (uris[0] if uris else "urn:scada:cli")
    from asyncua.crypto import cert_gen
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    d = Path.home() / ".scada" / "opcua-client"
    cp, kp = d / "cert.der", d / "key.pem"
    uri = "urn:scada:cli"
    if not (cp.exists() and kp.exists()):
        d.mkdir(parents=True, exist_ok=True)
        k = cert_gen.generate_private_key()
        c = cert_gen.generate_self_signed_app_certificate(
            k, "scada cli", {}, [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
            [ExtendedKeyUsageOID.CLIENT_AUTH], days=3650)
        fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cert_gen.dump_private_key_as_pem(k))
        cp.write_bytes(c.public_bytes(serialization.Encoding.DER))
        click.echo(f"generated client certificate {cp} (the server administrator must trust it)", err=True)
    return str(cp), str(kp), uri


async def _connect(o: dict[str, Any]):
    from asyncua import Client, ua
    from asyncua.crypto import security_policies as sp

    o["endpoint"] = endpoint_of(o)
    c = Client(o["endpoint"], timeout=o["timeout"])
    c.session_timeout = 60_000  # the server clamps longer requests anyway
    if o["username"]:
        c.set_user(o["username"])
        c.set_password(password_of(o))
    if o["policy"] != "None":
        cert, key, uri = _client_cert(o["cert"], o["key"])
        c.application_uri = uri
        policy = {"Basic256Sha256": sp.SecurityPolicyBasic256Sha256,
                  "Aes128_Sha256_RsaOaep": sp.SecurityPolicyAes128Sha256RsaOaep}[o["policy"]]
        mode = ua.MessageSecurityMode.SignAndEncrypt if o["mode"] == "SignAndEncrypt" else ua.MessageSecurityMode.Sign
        await c.set_security(policy, cert, key, mode=mode)
    try:
        await c.connect()
    except ua.UaStatusCodeError as e:
        c.disconnect_socket()
        raise ClientError(f"cannot connect to {o['endpoint']}: {ua.StatusCode(e.code).name}"
                          f"{_hint(e.code)}") from None
    except (TimeoutError, OSError, ua.UaError) as e:
        c.disconnect_socket()
        raise ClientError(f"cannot connect to {o['endpoint']}: {e or type(e).__name__}") from None
    return c


def endpoint_of(o: dict[str, Any]) -> str:
    """``--endpoint``, else the ``--site`` file's OPC UA endpoint, else the default."""
    if o.get("endpoint"):
        return o["endpoint"]
    if o.get("site_file"):
        from commands.core import load_or_exit

        cfg = load_or_exit(o["site_file"]).config.opcua
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "", "::") else cfg.host
        return f"opc.tcp://{host}:{cfg.port}/scada"
    return DEFAULT_ENDPOINT


def password_of(o: dict[str, Any]) -> str:
    """The password of ``--user``: from ``--password-file``, else ``SCADA_OPCUA_PASSWORD``, else
    a prompt (hidden; read from stdin when it is not a terminal). Passwords never appear on the
    command line, where other users of the machine could read them (``ps``)."""
    if o.get("password") is not None:
        return o["password"]
    user = o["username"]
    pf = o.get("password_file")
    if pf:
        try:
            text = Path(pf).read_text(encoding="utf-8")
        except OSError as e:
            raise ClientError(f"cannot read the password file {pf}: {e.strerror or e}") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        for ln in lines:  # the demo's accounts file: "user role password"
            parts = ln.split()
            if len(parts) == 3 and parts[0] == user:
                o["password"] = parts[2]
                return parts[2]
        if len(lines) == 1 and len(lines[0].split()) == 1:
            o["password"] = lines[0]
            return lines[0]
        raise ClientError(f"{pf} holds no password for {user!r} (one line with the password, or "
                          f"'user role password' lines)")
    env = os.environ.get("SCADA_OPCUA_PASSWORD")
    if env is not None:
        o["password"] = env
        return env
    o["password"] = click.prompt(f"password for {user}", hide_input=True, err=True)
    return o["password"]


def _hint(code: int) -> str:
    from scada import quality as Q

    return {
        Q.BadUserAccessDenied: " (wrong user/password, or the account is locked after repeated failures)",
        Q.BadCertificateUntrusted: " (ask the administrator to trust the client certificate)",
        Q.BadSecurityPolicyRejected: " (this server refuses SecurityPolicy None: use --policy Basic256Sha256)",
        Q.BadIdentityTokenRejected: " (anonymous access is off: use --user/--password)",
    }.get(code, "")


async def _ns(c, uri: str) -> int:
    arr = await c.get_namespace_array()
    if uri not in arr:
        raise ClientError(f"namespace {uri!r} not on this server (it has: {', '.join(arr[1:]) or 'none'}); "
                          f"use --namespace")
    return arr.index(uri)


async def _find(c, ns: int, pattern: str, limit: int) -> list[tuple[str, str, Any]]:
    """(path, unit, NodeId) of tags matching ``pattern``: FindTags on our server, else a
    structured browse (paths then made of browse names, e.g. ``J008/Status/Mode``)."""
    from asyncua import ua

    try:
        scada = await c.nodes.objects.get_child(f"{ns}:Scada")
        paths, units = await scada.call_method(f"{ns}:FindTags", pattern, ua.Variant(limit, ua.VariantType.UInt32))
        return [(p, u, ua.NodeId(p, ns)) for p, u in zip(paths or [], units or [], strict=False)]
    except ua.UaStatusCodeError:
        pass
    return await _browse_find(c, ns, pattern, limit)


async def _browse_find(c, ns: int, pattern: str, limit: int) -> list[tuple[str, str, Any]]:
    from asyncua import ua

    segs = pattern.split("/")
    found: list[tuple[str, str, Any]] = []
    budget = [BROWSE_BUDGET]

    async def walk(node, prefix: list[str]) -> None:
        if len(found) >= limit or budget[0] <= 0:
            return
        for ch in await node.get_children():
            budget[0] -= 1
            bn = await ch.read_browse_name()
            if bn.NamespaceIndex != ns:
                continue
            path = [*prefix, bn.Name]
            k = len(path) - 1
            if k < len(segs) and "**" not in segs[k] and not fnmatch.fnmatchcase(bn.Name, segs[k]) \
                    and not segs[k].startswith("*"):
                continue
            cls = await ch.read_node_class()
            if cls == ua.NodeClass.Variable and fnmatch.fnmatchcase("/".join(path), pattern):
                found.append(("/".join(path), "", ch.nodeid))
            elif cls == ua.NodeClass.Object:
                await walk(ch, path)

    await walk(c.nodes.objects, [])
    return found


async def _read_many(c, nodeids: list[Any]):
    from asyncua import ua

    out = []
    for k in range(0, len(nodeids), 1000):
        chunk = nodeids[k:k + 1000]
        params = ua.ReadParameters()
        params.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value) for n in chunk]
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        out.extend(await c.uaclient.read(params))
    return out


def _row(path: str, unit: str, dv) -> dict[str, Any]:
    v = dv.Value.Value if dv.Value is not None else None
    if isinstance(v, datetime):
        v = v.isoformat()
    elif not isinstance(v, (int, float, str, bool)) and v is not None:
        v = str(v)
    st = dv.StatusCode
    return {"path": path, "value": v, "unit": unit, "status": st.name if st is not None else "Good",
            "source_time": dv.SourceTimestamp.isoformat() if dv.SourceTimestamp else None}


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no matching tags)"
    w = max(len(r["path"]) for r in rows)
    lines = [f"{'path':<{w}}  {'value':>14} {'unit':<5} {'status':<28} source time"]
    for r in rows:
        v = r["value"]
        vs = f"{v:.6g}" if isinstance(v, float) else ("-" if v is None else str(v))
        lines.append(f"{r['path']:<{w}}  {vs:>14} {r['unit']:<5} {r['status']:<28} {r['source_time'] or '-'}")
    return "\n".join(lines)


def _run(coro):
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return None


@click.command()
@click.argument("pattern", default="*")
@click.option("--limit", default=10_000, show_default=True, help="At most this many tags.")
@_connection_options
def tags(pattern: str, limit: int, **o: Any) -> None:
    """Table of tags matching PATTERN (glob on tag paths, e.g. 'centre/cab-01/*/level')."""

    async def go() -> None:
        c = await _connect(o)
        try:
            ns = await _ns(c, o["namespace"])
            found = await _find(c, ns, pattern, limit)
            dvs = await _read_many(c, [n for _, _, n in found])
            rows = [_row(p, u, dv) for (p, u, _), dv in zip(found, dvs, strict=True)]
        finally:
            await c.disconnect()
        click.echo(json.dumps(rows, indent=1) if o["as_json"] else _table(rows))

    _run(go())


@click.command()
@click.argument("pattern")
@click.option("--interval", default=500.0, show_default=True, help="Publishing interval (ms).")
@click.option("--count", type=int, default=None, help="Exit after this many updates.")
@click.option("--duration", type=float, default=None, help="Exit after this many seconds.")
@click.option("--limit", default=10_000, show_default=True, help="Monitor at most this many tags.")
@_connection_options
def watch(pattern: str, interval: float, count: int | None, duration: float | None, limit: int, **o: Any) -> None:
    """Print live updates of tags matching PATTERN (one line, or one JSON object, per change)."""

    async def go() -> None:

        c = await _connect(o)
        done = asyncio.Event()
        n = [0]
        try:
            ns = await _ns(c, o["namespace"])
            found = await _find(c, ns, pattern, limit)
            if not found:
                raise ClientError(f"no tag matches {pattern!r}")
            names = {n: (p, u) for p, u, n in found}

            class Handler:
                def datachange_notification(self, node, val, data):
                    path, unit = names.get(node.nodeid, (node.nodeid.to_string(), ""))
                    r = _row(path, unit, data.monitored_item.Value)
                    if o["as_json"]:
                        click.echo(json.dumps(r))
                    else:
                        v = r["value"]
                        vs = f"{v:.6g}" if isinstance(v, float) else str(v)
                        click.echo(f"{r['source_time'] or '-'}  {r['path']} = {vs} {r['unit']} [{r['status']}]")
                    sys.stdout.flush()
                    n[0] += 1
                    if count is not None and n[0] >= count:
                        done.set()

            sub = await c.create_subscription(interval, Handler())
            nodes = [c.get_node(n) for _, _, n in found]
            for k in range(0, len(nodes), 1000):
                await sub.subscribe_data_change(nodes[k:k + 1000])
            click.echo(f"watching {len(nodes)} tags (Ctrl+C to stop)", err=True)
            try:
                await asyncio.wait_for(done.wait(), duration)
            except TimeoutError:
                pass
            await sub.delete()
        finally:
            await c.disconnect()

    _run(go())


def parse_value(text: str, dtype: str) -> Any:
    """Command-line text -> Python value for a tag of OPC UA type ``dtype``."""
    if dtype == "Boolean":
        low = text.lower()
        if low in ("1", "true", "on", "yes"):
            return True
        if low in ("0", "false", "off", "no"):
            return False
        raise click.BadParameter(f"expected true/false for a Boolean tag, got {text!r}")
    if dtype == "String":
        return text
    try:
        if dtype in ("Double", "Float"):
            return float(text)
        return int(text, 0)
    except ValueError:
        raise click.BadParameter(f"expected a number for a {dtype} tag, got {text!r}") from None


@click.command()
@click.argument("tag")
@click.argument("value")
@_connection_options
def write(tag: str, value: str, **o: Any) -> None:
    """Write VALUE to TAG (through the owning driver); prints the device's status code."""

    async def go() -> int:
        from asyncua import ua

        c = await _connect(o)
        try:
            ns = await _ns(c, o["namespace"])
            node = c.get_node(ua.NodeId(tag, ns))
            try:
                dt = await node.read_data_type()
            except ua.UaStatusCodeError as e:
                raise ClientError(f"{tag}: {ua.StatusCode(e.code).name} (is the tag path right? "
                                  f"try `scada tags '{tag.rsplit('/', 1)[0]}/*'`)") from None
            vt = ua.VariantType(dt.Identifier) if dt.NamespaceIndex == 0 and isinstance(dt.Identifier, int) \
                and dt.Identifier <= 25 else ua.VariantType.Double
            v = parse_value(value, vt.name)
            params = ua.WriteParameters()
            params.NodesToWrite = [ua.WriteValue(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value,
                                                 Value=ua.DataValue(ua.Variant(v, vt)))]
            res = (await c.uaclient.write(params))[0]
        finally:
            await c.disconnect()
        if o["as_json"]:
            click.echo(json.dumps({"path": tag, "value": v, "status": res.name}))
        else:
            click.echo(f"{tag} <- {v}: {res.name}")
        return 0 if res.is_good() else 1

    rc = _run(go())
    if rc:
        sys.exit(rc)


@click.group()
def user() -> None:
    """Accounts of the OPC UA server (salted password hashes for the site file)."""


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "engineer", "admin"]), required=True)
@click.option("--password-file", "password_file", type=click.Path(dir_okay=False), default=None,
              help="File holding the new password (one line). Else env SCADA_NEW_PASSWORD; else prompted "
                   "for when a terminal is attached, generated otherwise. Never on the command line.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Append the entry to this YAML file (a `users:` list) instead of printing it.")
def user_add(name: str, role: str, password_file: str | None, out: str | None) -> None:
    """Print (or append) the `users:` entry for NAME with a salted scrypt hash of its password."""
    from scada.sections.common import _ident
    from scada.users import generate_password, hash_line

    try:
        _ident(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    generated = False
    password = os.environ.get("SCADA_NEW_PASSWORD")
    if password_file:
        password = Path(password_file).read_text(encoding="utf-8").strip()
    if password is None:
        if sys.stdin.isatty():
            password = click.prompt("password", hide_input=True, confirmation_prompt=True)
        else:
            password, generated = generate_password(), True
    entry = hash_line(name, role, password)
    line = f"  - {{name: {entry['name']}, role: {entry['role']}, password_hash: '{entry['password_hash']}'}}"
    if out:
        p = Path(out)
        text = p.read_text(encoding="utf-8") if p.exists() else ""
        with open(p, "a", encoding="utf-8") as f:
            if not text:
                f.write("users:\n")
            f.write(line + "\n")
        click.echo(f"added {name} ({role}) to {out}")
    else:
        click.echo("users:\n" + line)
    if generated:
        click.echo(f"generated password for {name}: {password}", err=True)
