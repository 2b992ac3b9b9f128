"""A small HTTP proxy in front of the S3 server of the tests: it can hold or refuse the PUTs of packs.

A real server on 127.0.0.1 (a thread of the test process), forwarding every request to the
S3 server unchanged, except PUTs of packs (``/packs/`` in the path) while ``hold`` is clear
(kept until it is set: a storage write under way for as long as the test wants) or while
``refuse`` is set (403 Access Denied, as S3 answers credentials that may read, not write).
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
          b"<Message>Access Denied</Message></Error>")


class S3Proxy:
    """The proxy: ``endpoint`` to give fsspec; ``held``: the paths of the pack PUTs held so far."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.hold = threading.Event()
        self.hold.set()  # nothing held until a test clears it
        self.refuse = False
        self.forward_held = True  # False: held PUTs are dropped when let go (their writer died meanwhile)
        self.held: list[str] = []  # paths of the PUTs held so far
        self.changed = threading.Condition()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue" as S3 does

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT" and "/packs/" in self.path:
                    if proxy.refuse:
                        return self._answer(403, DENIED)
                    if not proxy.hold.is_set():
                        with proxy.changed:
                            proxy.held.append(self.path)
                            proxy.changed.notify_all()
                        proxy.hold.wait()
                        if not proxy.forward_held:
                            self.close_connection = True
                            return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for k, v in reply.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # a request forwarded after the S3 server stopped (the tests' end): nothing to say

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_held(self, part: str, timeout: float = 30) -> bool:
        """Until a PUT whose path holds ``part`` is held (False past ``timeout``)."""
        with self.changed:
            return self.changed.wait_for(lambda: any(part in p for p in self.held), timeout)

    def close(self) -> None:
        self.hold.set()  # held requests go on (their clients may be gone)
        self.server.shutdown()
        self.server.server_close()
