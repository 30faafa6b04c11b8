"""``scada gis import FILE --site SITE``: device positions from a GIS export.

The import is a state change, so it goes through the running server's operator API: the command
logs in to the server's web console as ``--user`` (password from ``--password-file``, else
``SCADA_OPCUA_PASSWORD``, else a prompt, as every other CLI command) and POSTs the file to
``/api/gis/import`` with the session's CSRF token; the server checks the role matrix
(``gis.import``: engineer), applies, audits and answers with the report. ``--dry-run`` only
reports what an import would do, and runs offline (nothing is written).

A shapefile is sent as a .zip of the .shp and its .shx/.dbf/.prj siblings.
"""

from __future__ import annotations

import http.client
import io
import json
import secrets
import ssl
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click


def register(main: click.Group) -> None:
    main.add_command(gis)


class GisCliError(click.ClickException):
    pass


@click.group()
def gis() -> None:
    """Device positions from a city's GIS (GeoJSON, CSV, shapefile)."""


def read_input(path: str) -> tuple[str, bytes]:
    """(name sent, bytes): a .shp becomes a .zip of itself and its siblings."""
    from scada import gis as G

    p = Path(path)
    if p.suffix.lower() == ".shp":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for ext in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
                for cand in (p.with_suffix(ext), p.with_suffix(ext.upper())):
                    if cand.exists():
                        z.write(cand, p.stem + ext)
                        break
        return p.stem + ".zip", buf.getvalue()
    size = p.stat().st_size
    if size > G.MAX_BYTES:
        raise GisCliError(f"{path}: {size} bytes is above the GIS import limit of {G.MAX_BYTES}")
    return p.name, p.read_bytes()


def multipart(fields: dict[str, str], name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "scada" + secrets.token_hex(12)
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
    out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe}"\r\n'
              f"Content-Type: application/octet-stream\r\n\r\n".encode())
    out.write(data)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class Console:
    """A minimal HTTP(S) client of the web console: one connection, the session cookie, the
    server's certificate pinned (the file the server presents, from its state directory)."""

    def __init__(self, url: str, pinned_der: bytes | None, timeout: float = 60.0):
        u = urlsplit(url)
        self.https = u.scheme == "https"
        self.host, self.port = u.hostname or "127.0.0.1", u.port or (443 if self.https else 80)
        self.pinned = pinned_der
        self.timeout = timeout
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        if self.https:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # self-signed server certificate: pinned below
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.connect()
            if self.https and self.pinned is not None:
                peer = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
                if peer != self.pinned:
                    raise GisCliError(f"{self.host}:{self.port} presents another certificate than the "
                                      "server's own (state dir opcua/server-cert.der); refusing to send "
                                      "the password")
            h = {"Accept": "application/json", **(headers or {})}
            if self.cookies:
                h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            for k, v in r.getheaders():
                if k.lower() == "set-cookie":
                    name, _, rest = v.partition("=")
                    self.cookies[name.strip()] = rest.split(";", 1)[0]
            raw = r.read()
            try:
                return r.status, json.loads(raw or b"null")
            except ValueError:
                return r.status, {"error": "not_json", "detail": raw[:300].decode(errors="replace")}
        finally:
            conn.close()


def _web_url(site: Any) -> tuple[str, bytes | None]:
    cfg = getattr(site.config, "web", None)
    if cfg is None or not getattr(cfg, "enabled", False):
        raise GisCliError("the site has no web console (web: {enabled: true}); the import needs the "
                          "running server's console, or use --dry-run to check the file offline")
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "", "::") else cfg.host
    scheme = "https" if cfg.tls else "http"
    der = Path(site.state_dir) / "opcua" / "server-cert.der"
    return f"{scheme}://{host}:{cfg.port}", der.read_bytes() if der.exists() else None


def upload(url: str, pinned: bytes | None, user: str, password: str, name: str, data: bytes,
           fields: dict[str, str]) -> dict[str, Any]:
    """Log in, POST the file with the CSRF token, return the server's JSON answer."""
    c = Console(url, pinned)
    try:
        st, body = c.request("POST", "/login", json.dumps({"user": user, "password": password}).encode(),
                             {"Content-Type": "application/json"})
    except OSError as e:
        raise GisCliError(f"cannot reach the web console at {url}: {e} (is `scada run` running with "
                          "web.enabled? --dry-run checks a file offline)") from None
    if st != 200:
        raise GisCliError(f"login as {user} refused ({st}): {(body or {}).get('detail', body)}")
    csrf = (body or {}).get("csrf")
    if not csrf:
        st, me = c.request("GET", "/api/me")
        csrf = (me or {}).get("csrf") if st == 200 else None
    if not csrf:
        raise GisCliError("the console gave no CSRF token after login")
    payload, ctype = multipart(fields, name, data)
    st, body = c.request("POST", "/api/gis/import", payload, {"Content-Type": ctype, "X-CSRF-Token": csrf})
    if st != 200:
        raise GisCliError(f"import refused ({st} {(body or {}).get('error', '')}): "
                          f"{(body or {}).get('detail', body)}")
    return body


@gis.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--site", "site_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The site file (devices to match; the console's address).")
@click.option("--id-field", default="id", show_default=True, help="Property / column / attribute holding the device id.")
@click.option("--epsg", type=int, default=None,
              help="CRS of the coordinates (2154: Lambert-93). CSV x/y columns need it; a shapefile's .prj is read otherwise.")
@click.option("--format", "fmt", type=click.Choice(["geojson", "csv", "shapefile"]), default=None,
              help="Format [default: from the file name].")
@click.option("--lat-field", default=None, help="CSV latitude column [default: lat/latitude].")
@click.option("--lon-field", default=None, help="CSV longitude column [default: lon/lng/longitude].")
@click.option("--x-field", default=None, help="CSV x column (with --epsg) [default: x/easting].")
@click.option("--y-field", default=None, help="CSV y column (with --epsg) [default: y/northing].")
@click.option("--dry-run", is_flag=True, help="Only report what the import would do (offline, writes nothing).")
@click.option("--url", default=None, help="The web console [default: from the site file's web: section].")
@click.option("--user", "username", default=None, help="User to log in as (engineer role needed).")
@click.option("--password-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the password (one line, or the demo's 'user role password' lines); else env "
                   "SCADA_OPCUA_PASSWORD; else a prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def gis_import(file: str, site_file: str, id_field: str, epsg: int | None, fmt: str | None,
               lat_field: str | None, lon_field: str | None, x_field: str | None, y_field: str | None,
               dry_run: bool, url: str | None, username: str | None, password_file: str | None,
               as_json: bool) -> None:
    """Import device positions from FILE (GeoJSON, CSV, shapefile) into the running server."""
    from commands.client import password_of
    from commands.core import load_or_exit
    from scada import gis as G

    site = load_or_exit(site_file)
    name, data = read_input(file)
    fields = {k: str(v) for k, v in {"id_field": id_field, "epsg": epsg, "format": fmt, "lat_field": lat_field,
                                     "lon_field": lon_field, "x_field": x_field, "y_field": y_field}.items()
              if v is not None}
    if dry_run:
        try:
            rep = G.import_file(site, name, data, G.Options.from_dict(fields), dry_run=True)
        except G.GisError as e:
            raise GisCliError(str(e)) from None
        d = rep.as_dict()
    else:
        if username is None:
            raise GisCliError("an import changes the server's state: log in with --user (engineer role)")
        pinned = None
        if url is None:
            url, pinned = _web_url(site)
        pw = password_of({"username": username, "password_file": password_file})
        body = upload(url, pinned, username, pw, name, data, fields)
        d = body.get("data") or body
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        click.echo(G.Report.text(d))
