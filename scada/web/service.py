"""The web console as a runtime service (``scada.services`` entry point ``web``).

uvicorn serves the Starlette application (:mod:`scada.web.app`) in the server's own event
loop: ``uvicorn.Server(config).serve(sockets=[...])`` on a socket this service binds itself, so
a port that cannot be listened on is one clear line (``web.port in site.yaml``), not uvicorn's
``sys.exit``. uvicorn's signal handlers are not installed: the runtime owns SIGINT/SIGTERM and
cancels this task; the service then ends every live stream and shuts uvicorn down.

HTTPS uses the server's certificate (:func:`scada.opcua.security.ensure_server_certificate`,
the one the OPC UA server presents), converted to PEM under ``<state_dir>/web/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import quality as Q
from ..errors import CannotListen
from ..runtime import Service
from ..tags import Batch, PointDef

log = logging.getLogger("scada.web")

HEALTH = (
    PointDef("sessions", "int", "", "open console sessions"),
    PointDef("stream_clients", "int", "", "browsers receiving live updates"),
    PointDef("logins", "int", "", "successful logins since start"),
    PointDef("login_refused", "int", "", "refused logins (bad password, locked, rate limit)"),
    PointDef("refused", "int", "", "requests answered with a 4xx (malformed, unauthorised, too large)"),
    PointDef("malformed", "int", "", "malformed requests (400)"),
    PointDef("oversized", "int", "", "request bodies refused as too large (413)"),
    PointDef("rate_limited", "int", "", "logins refused by the rate limit (429)"),
    PointDef("csrf_refused", "int", "", "state-changing requests without a valid CSRF token"),
    PointDef("dropped_clients", "int", "", "live-update clients dropped for not reading"),
    PointDef("errors", "int", "", "requests that failed inside the server (500)"),
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebService(Service):
    name = "web"

    def __init__(self, runtime: Any):
        from .app import Ctx
        from .hub import Hub
        from .security import SessionStore

        self.runtime = runtime
        self.cfg = runtime.site.config.web
        self.state_dir = Path(runtime.state_dir) / "web"
        self.started = asyncio.Event()
        self.counters = {p.name: 0 for p in HEALTH}
        self.hub = Hub(runtime, max_clients=self.cfg.max_stream_clients, queue_size=self.cfg.stream_queue)
        self.sessions = SessionStore(runtime.clock, self.cfg.idle_timeout, self.cfg.max_sessions)
        self.ctx = Ctx(runtime, self.hub, self.sessions, tls=self.cfg.tls, max_body=self.cfg.max_upload_bytes,
                       counters=self.counters, login_rate=self.cfg.login_rate)
        self._health_first = runtime.tagdb.add_tags("_system/web", HEALTH)
        self.port: int | None = None
        self.server: Any = None
        if not self.cfg.tls and not is_loopback(self.cfg.host):
            log.warning("web console on %s:%s speaks plain HTTP (web.tls: false): passwords and "
                        "session cookies cross the network in clear; use it behind a TLS proxy only",
                        self.cfg.host, self.cfg.port)

    @property
    def scheme(self) -> str:
        return "https" if self.cfg.tls else "http"

    @property
    def url(self) -> str:
        host = self.cfg.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port if self.port is not None else self.cfg.port}/"

    def connect_info(self) -> str:
        tls = "HTTPS with the server's certificate" if self.cfg.tls else "plain HTTP"
        return f"console {self.url} ({tls}; log in with a site account)"

    def _bind(self) -> socket.socket:
        host, port = self.cfg.host, self.cfg.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(128)
        except OSError as e:
            s.close()
            why = ("address already in use; another program holds it: stop it or choose another port"
                   if e.errno == errno.EADDRINUSE else e.strerror or str(e))
            raise CannotListen(f"cannot listen on {host}:{port} for the web console: {why} with "
                               f"web.port in {self.runtime.site.path}") from None
        s.setblocking(False)
        self.port = s.getsockname()[1]
        return s

    async def _tls_files(self) -> tuple[str, str]:
        """PEM copies of the server's certificate and key (uvicorn's ssl module wants PEM)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from ..opcua.security import ensure_server_certificate

        opcua = self.runtime.services.get("opcua")
        if opcua is not None and getattr(opcua, "started", None) is not None:
            # one certificate for both front ends: let the OPC UA server create it first
            waiter = asyncio.ensure_future(opcua.started.wait())
            try:
                await asyncio.wait_for(asyncio.shield(waiter), 30)
            except TimeoutError:
                log.warning("web: the OPC UA server did not start within 30 s; using its "
                            "certificate directory anyway")
            finally:
                waiter.cancel()
            directory, app_uri = Path(opcua.state_dir), opcua.app_uri
        else:
            from ..opcua.redundancy import application_uri

            directory = Path(self.runtime.state_dir) / "opcua"
            ha = self.runtime.ha
            app_uri = application_uri(self.runtime.site.name, ha.node if ha.pair else None)

        def convert() -> tuple[str, str]:
            cert_p, key_p = ensure_server_certificate(directory, app_uri, self.cfg.host)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            pem = x509.load_der_x509_certificate(cert_p.read_bytes()).public_bytes(serialization.Encoding.PEM)
            out_c = self.state_dir / "server-cert.pem"
            out_c.write_bytes(pem)
            return str(out_c), str(key_p)

        return await asyncio.to_thread(convert)

    async def run(self) -> None:
        import uvicorn

        from .app import build_app

        sock = self._bind()
        try:
            kw: dict[str, Any] = {}
            if self.cfg.tls:
                kw["ssl_certfile"], kw["ssl_keyfile"] = await self._tls_files()
            config = uvicorn.Config(build_app(self.ctx), host=self.cfg.host, port=self.port or 0,
                                    lifespan="off", access_log=False, log_level="warning",
                                    timeout_graceful_shutdown=1, server_header=False,
                                    proxy_headers=False, **kw)
            server = _Server(config, self._on_started)
            self.server = server
            self.hub.start()
            health = asyncio.create_task(self._health(), name="web:health")
            try:
                await server.serve(sockets=[sock])
            except asyncio.CancelledError:
                self.hub.close()
                server.should_exit = True
                server.force_exit = True
                try:
                    await asyncio.wait_for(server.shutdown(sockets=[sock]), 2.0)
                except Exception:  # best effort at shutdown: the runtime's budget is short
                    pass
                raise
            finally:
                health.cancel()
                self.hub.close()
                self.started.clear()
        finally:
            sock.close()

    def _on_started(self) -> None:
        self.started.set()
        log.info("web console listening on %s", self.url)

    def publish_health(self) -> None:
        c = self.counters
        c["sessions"] = len(self.sessions)
        c["stream_clients"] = len(self.hub.clients)
        c["dropped_clients"] = self.hub.stats["dropped_clients"]
        vals = [float(c[p.name]) for p in HEALTH]
        self.runtime.tagdb.apply(Batch.of(range(self._health_first, self._health_first + len(vals)), vals,
                                          Q.Good, self.runtime.clock.time()))

    async def _health(self) -> None:
        while True:
            self.publish_health()
            await asyncio.sleep(2.0)

    async def aclose(self) -> None:
        self.hub.close()
        self.sessions.close_all()


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its signal handlers: the runtime owns SIGINT/SIGTERM (uvicorn's
        ``signal.signal`` calls would replace the event loop's handlers)."""

        on_started: Any = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self.on_started is not None:
                self.on_started()

    return Server


def _Server(config: Any, on_started: Any) -> Any:
    server = _server_class()(config)
    server.on_started = on_started
    return server


def create(runtime: Any) -> WebService | None:
    """The console for this runtime, or None when ``web.enabled`` is off."""
    if not runtime.site.config.web.enabled:
        return None
    return WebService(runtime)
