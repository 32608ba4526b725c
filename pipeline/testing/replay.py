"""Serving a simulated API on 127.0.0.1 for tests and benchmarks: the HTTP plumbing the replay servers share.

A sim (:class:`~pipeline.testing.mastodon_replay.MastodonSim`, ``BlueskySim``, ``MisskeySim``) answers requests
without a socket: ``sim.handle(method, target, headers, body) -> (status, headers, body)``. :class:`Replay` serves
one on a free port in a daemon thread (a context manager); :func:`numbered_jpeg` makes the images they serve;
:func:`serve` is a replay module's ``main``: it writes
the base URL to a port file (atomically) and serves until interrupted.
"""

from __future__ import annotations

import functools
import io
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@functools.cache
def _jpeg_bases() -> tuple[bytes, ...]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for side in (48, 64, 80, 96):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return tuple(out)


def numbered_jpeg(n: int, tag: str) -> bytes:
    """A small real JPEG, distinct per ``(tag, n)``: one of four noise images with ``facerank-<tag>-<n>`` in a
    comment segment (so its sha256 differs; decoders skip the comment)."""
    bases = _jpeg_bases()
    return with_comment(bases[n % len(bases)], f"facerank-{tag}-{n}")


def with_comment(jpeg: bytes, text: str) -> bytes:
    """``jpeg`` with ``text`` in a comment segment right after its start marker: other bytes (another sha256), the
    same pixels (decoders skip comments)."""
    com = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(com) + 2).to_bytes(2, "big") + com + jpeg[2:]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as API and image servers set it: the headers and the body go out in two writes, and with Nagle's
    # algorithm the body's last segment waited for the client's delayed ACK (about 40 ms on Linux) on every response
    # of a kept-alive connection (the crawl keeps them alive); benchmarks/bench_scrape.py's server does the same
    disable_nagle_algorithm = True

    def _answer(self, method: str) -> None:
        try:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            status, headers, out = self.server.replay.answer(method, self.path, dict(self.headers.items()), body)  # type: ignore[attr-defined]
        except Exception as e:  # a bug here must show, not hang the client
            status, headers, out = 500, {"Content-Type": "text/plain"}, f"internal error: {e}\n".encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self) -> None:  # noqa: N802
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up mid-answer


class Replay:
    """``sim_class(**kw)`` served on 127.0.0.1 (a free port) in a daemon thread; a context manager."""

    sim_class: type = object

    def __init__(self, **kw: object):
        self._kw = kw
        self.server: _Server | None = None
        self.sim: Any = None

    def answer(self, method: str, target: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        """One request's answer: the sim's own."""
        return self.sim.handle(method, target, headers, body)

    def start(self) -> Replay:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.sim = self.sim_class(**self._kw)
        self.sim.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.server.replay = self  # type: ignore[attr-defined]
        name = f"{self.sim_class.__name__.lower()}-replay"
        threading.Thread(target=self.server.serve_forever, name=name, daemon=True).start()
        return self

    @property
    def base_url(self) -> str:
        assert self.sim is not None
        return self.sim.base_url

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> Replay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(replay: Replay, port_file: str) -> int:
    """Start ``replay``, write its base URL to ``port_file`` (whole or not at all) and serve until interrupted."""
    replay.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(replay.base_url)
    os.replace(port_file + ".tmp", port_file)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    replay.stop()
    return 0
