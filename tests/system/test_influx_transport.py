"""The influx backend's HTTP side against a scripted InfluxDB v2 write endpoint on a free
loopback port: bodies go out in order over one keep-alive connection per write (built while
the previous one is in flight), the first failure stops the block, 413 splits, Retry-After
and 4xx handling, servers that close the connection, and the ``gzip`` option."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from historian.base import BackendRejected, BackendUnavailable, Points
from historian.influx import InfluxBackend, LineEncoder
from tests.conftest import free_port

pytestmark = pytest.mark.system

T0 = 1_735_689_600.0


class WriteServer:
    """Records every write (client port, lines, headers); ``answer(n, lines)`` picks the reply
    to the n-th request (status, extra headers); ``close_each``: answer with Connection: close."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, list[str], dict[str, str]]] = []
        self.answer: Callable[[int, list[str]], tuple[int, dict[str, str]]] = lambda n, lines: (204, {})
        self.close_each = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                lines = body.decode().splitlines()
                server.requests.append((self.client_address[1], lines, dict(self.headers)))
                status, extra = server.answer(len(server.requests), lines)
                payload = b"" if status == 204 else b'{"error": "scripted"}'
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                if server.close_each:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def lines(self) -> list[str]:
        return [ln for _, lines, _ in self.requests for ln in lines]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[WriteServer]:
    s = WriteServer()
    yield s
    s.close()


def block(n: int, n_tags: int = 7, offset: float = 0.0) -> Points:
    sid = np.arange(n, dtype=np.int32) % n_tags
    t = T0 + np.arange(n) // n_tags * 60.0
    v = np.arange(n, dtype=np.float64) * 0.5 + offset
    return Points([f"a/t{i}" for i in range(n_tags)], sid, t, v, np.zeros(n, np.uint32))


def backend(server: WriteServer, **opts: object) -> InfluxBackend:
    return InfluxBackend("", {"url": server.url, "batch_lines": 1000, "retries": 0, "timeout": 10, **opts})


def expected(pts: Points) -> list[str]:
    return LineEncoder("scada", "ms").encode(pts).decode().splitlines()


def test_bodies_go_in_order_on_one_connection_per_write(server):
    b = backend(server)
    pts = block(5500)
    b.write(pts, "b1")
    assert [len(lines) for _, lines, _ in server.requests] == [1000] * 5 + [500]
    assert server.lines() == expected(pts)  # every line once, in order
    assert len({port for port, _, _ in server.requests}) == 1  # keep-alive within the write
    assert all("Content-Encoding" not in h for _, _, h in server.requests)  # gzip auto: loopback
    b.write(block(10), "b2")  # single body: no sender thread involved
    assert len({port for port, _, _ in server.requests}) == 2  # a new connection per write
    assert b.written_points == 5510
    b.close()
    b.close()  # idempotent


def test_gzip_on_sends_compressed_bodies(server):
    b = backend(server, gzip=True)
    pts = block(2500)
    b.write(pts, "b")
    assert all(h.get("Content-Encoding") == "gzip" for _, _, h in server.requests)
    assert server.lines() == expected(pts)
    b.close()


def test_first_failure_stops_the_block_and_a_replay_is_complete(server):
    server.answer = lambda n, lines: (503, {}) if n == 3 else (204, {})
    b = backend(server)
    pts = block(6000)
    with pytest.raises(BackendUnavailable, match="503"):
        b.write(pts, "b")
    assert len(server.requests) == 3  # nothing sent after the failed body
    assert b.written_points == 0
    server.requests.clear()
    server.answer = lambda n, lines: (204, {})
    b.write(pts, "b")  # the spool replays the whole block: same lines, same times (overwrite)
    assert server.lines() == expected(pts)
    b.close()


def test_too_large_bodies_are_split_until_accepted(server):
    server.answer = lambda n, lines: (413, {}) if len(lines) > 300 else (204, {})
    b = backend(server)
    pts = block(2000)
    b.write(pts, "b")
    accepted = [ln for _, lines, _ in server.requests if len(lines) <= 300 for ln in lines]
    assert accepted == expected(pts)
    b.close()


def test_retry_after_short_is_waited_long_is_handed_back(server):
    server.answer = lambda n, lines: (429, {"Retry-After": "0"}) if n == 1 else (204, {})
    b = backend(server, retries=2)
    pts = block(1500)
    b.write(pts, "b")
    assert server.lines()[1000:] == expected(pts)  # first body again after the 429, then the second
    server.requests.clear()
    server.answer = lambda n, lines: (503, {"Retry-After": "30"})
    with pytest.raises(BackendUnavailable) as e:
        b.write(pts, "b")
    assert e.value.retry_after == 30.0 and len(server.requests) == 1  # not waited here: the forwarder backs off
    b.close()


def test_bad_data_is_rejected_not_retried(server):
    server.answer = lambda n, lines: (400, {})
    b = backend(server, retries=3)
    with pytest.raises(BackendRejected, match="400"):
        b.write(block(2500), "b")
    assert len(server.requests) == 1
    b.close()


def test_server_closing_every_connection(server):
    server.close_each = True
    b = backend(server)
    pts = block(3500)
    b.write(pts, "b")
    assert server.lines() == expected(pts)
    assert len({port for port, _, _ in server.requests}) == 4  # reopened after each answer
    b.close()


def test_unreachable_server_is_unavailable():
    b = InfluxBackend("", {"url": f"http://127.0.0.1:{free_port()}", "batch_lines": 1000, "retries": 0})
    with pytest.raises(BackendUnavailable, match="unreachable"):
        b.write(block(3000), "b")  # nothing listens on the port
    assert b.written_points == 0
    b.close()


@pytest.mark.parametrize(("url", "value", "want"), [
    ("http://127.0.0.1:8428", "auto", False), ("http://localhost:8428", "auto", False),
    ("http://[::1]:8428", "auto", False), ("http://vm.city.example:8428", "auto", True),
    ("http://127.0.0.1:8428", True, True), ("http://vm:8428", "false", False), ("http://vm:8428", False, False),
])
def test_gzip_option(url, value, want):
    assert InfluxBackend("", {"url": url, "gzip": value}).gzip is want


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="gzip"):
        InfluxBackend("", {"url": "http://127.0.0.1:1", "gzip": "maybe"})
    with pytest.raises(ValueError, match="url"):
        InfluxBackend("", {"url": "ftp://x"})
