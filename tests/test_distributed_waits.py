"""Every wait on a Dask scheduler ends, with one line: a silent listener, an HTTP server, a closed
port, and a scheduler without workers. The fake servers run on 127.0.0.1 and stop by themselves."""

import contextlib
import http.server
import select
import socket
import threading
import time

import pytest

pytest.importorskip("distributed")

from experiments import distributed as dist  # noqa: E402
from experiments.errors import UserError  # noqa: E402

LIFETIME_S = 120  # every fake server stops after this, whatever the test does


@contextlib.contextmanager
def _silent_listener():
    """Accepts connections and never sends a byte."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        conns, deadline = [], time.monotonic() + LIFETIME_S
        while not stop.is_set() and time.monotonic() < deadline:
            if select.select([srv], [], [], 0.2)[0]:
                conns.append(srv.accept()[0])
        for c in conns:
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        srv.close()


@contextlib.contextmanager
def _http_server():
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    t.start()
    timer = threading.Timer(LIFETIME_S, httpd.shutdown)
    timer.start()
    try:
        yield f"tcp://127.0.0.1:{httpd.server_address[1]}"
    finally:
        timer.cancel()
        httpd.shutdown()
        httpd.server_close()


def _one_line_error(address, **kw):
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        dist.engine(scheduler=address, connect_timeout=3, worker_wait=3, **kw)
    assert "\n" not in str(e.value)
    return str(e.value), time.monotonic() - start


def test_a_silent_listener_is_not_waited_on_forever():
    with _silent_listener() as address:
        message, _ = _one_line_error(address)
    assert "sent nothing within 3 s" in message and address in message


def test_an_http_server_is_named_not_a_memory_error():
    with _http_server() as address:
        message, _ = _one_line_error(address)
    assert "'HTTP/1.0 200 OK'" in message and "not a Dask scheduler" in message


def test_a_closed_port_and_a_bad_address_are_one_line():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    message, _ = _one_line_error(f"tcp://127.0.0.1:{port}")
    assert "cannot reach the Dask scheduler" in message
    message, _ = _one_line_error("http://127.0.0.1:80")
    assert "must be tcp://HOST:PORT" in message


def test_a_scheduler_without_workers_is_waited_on_boundedly():
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=0, processes=True, dashboard_address=None, host="127.0.0.1")
    try:
        message, _ = _one_line_error(cluster.scheduler_address)
    finally:
        cluster.close()
    assert "has no workers (waited 3 s)" in message and "dask worker" in message


def test_tasks_on_a_cluster_left_without_workers_end_with_one_line():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=0, processes=True, dashboard_address=None, host="127.0.0.1")
    client = Client(cluster)
    try:
        engine = dist.Engine(client, None, 1, {"kind": "scheduler"}, worker_wait=2)
        with pytest.raises(UserError, match=r"no worker for 2 s with 3 task\(s\) left"):
            engine.map(abs, [(-1,), (-2,), (-3,)], desc="test")
    finally:
        client.close()
        cluster.close()
