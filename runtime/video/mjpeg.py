"""A live MJPEG preview over HTTP (``multipart/x-mixed-replace``) for headless boards; any browser shows it.

The standard library's ``http.server`` serves it from a background thread; frames are JPEG-encoded with
Pillow. Every client gets the newest frame (a slow client skips frames, it never delays the stream).
"""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Tuple
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from ...core.errors import FcnsegError
from .sources import Sink

BOUNDARY = "fcnsegframe"
CLIENT_WAIT = 1.0   # seconds a client waits for the next frame before checking whether the sink closed


class MjpegSink(Sink):
    """Serve the frames written to it at ``http://HOST:PORT/`` as an MJPEG stream.

    Args:
        url: ``http://HOST:PORT`` (``0.0.0.0`` to be reachable from other machines; port 0 picks a free one,
            see ``address``).
        quality: JPEG quality, 1..95.
    """

    def __init__(self, url: str, *, quality: int = 80) -> None:
        parts = urlsplit(url)
        try:
            host, port = parts.hostname or "0.0.0.0", parts.port
        except ValueError:
            port = None
        if port is None:
            raise FcnsegError(f"expected http://HOST:PORT for the preview, got {url!r}; try http://0.0.0.0:8080")
        self.name, self.quality = url, quality
        self._cond = threading.Condition()
        self._jpeg: Optional[bytes] = None
        self._seq = 0
        self._closed = False
        try:
            self._server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as e:
            raise FcnsegError(f"could not serve the preview on {host}:{port} ({e.strerror or e}); try another "
                              "port") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fcnseg-mjpeg", daemon=True)
        self._thread.start()

    @property
    def address(self) -> Tuple[str, int]:
        """The (host, port) the server listens on."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def write(self, frame: np.ndarray, index: int) -> None:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=self.quality)
        with self._cond:
            self._jpeg, self._seq = buf.getvalue(), self._seq + 1
            self._cond.notify_all()

    def next_frame(self, after: int) -> Tuple[Optional[bytes], int]:
        """The newest JPEG once it is newer than sequence number ``after``; (None, after) once closed."""
        with self._cond:
            while self._seq <= after and not self._closed:
                self._cond.wait(CLIENT_WAIT)
            if self._seq <= after:
                return None, after
            return self._jpeg, self._seq

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()


def _handler(sink: MjpegSink) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            seq = 0
            try:
                while True:
                    jpeg, seq = sink.next_frame(seq)
                    if jpeg is None:
                        break
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                     "\r\n\r\n".encode() + jpeg + b"\r\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass   # the viewer went away

        def log_message(self, format: str, *args: object) -> None:  # keep the progress line clean
            pass

    return Handler
