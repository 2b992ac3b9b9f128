"""Drive headless chromium through the DevTools protocol (tornado's websocket client): open a
page, evaluate JavaScript in it (click a button, read the text), wait for a condition."""

from __future__ import annotations

import asyncio
import itertools
import json
import pathlib
import subprocess
import time
import urllib.request

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0")


class Browser:
    """One chromium process showing one page; ``evaluate`` runs an expression in that page."""

    def __init__(self, chromium: str, profile: pathlib.Path, url: str, timeout: float = 30) -> None:
        self.proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise AssertionError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as res:
            pages = [t for t in json.load(res) if t["type"] == "page"]
        self.ws_url = pages[0]["webSocketDebuggerUrl"]
        self.ids = itertools.count(1)
        self.loop = asyncio.new_event_loop()
        from tornado.websocket import websocket_connect

        async def connect():  # made inside the loop: its futures belong to it
            return await websocket_connect(self.ws_url, max_message_size=64 * 1024 * 1024)

        self.ws = self.loop.run_until_complete(connect())

    def evaluate(self, expression: str) -> object:
        return self.loop.run_until_complete(self._evaluate(expression))

    async def _evaluate(self, expression: str) -> object:
        msg_id = next(self.ids)
        await self.ws.write_message(json.dumps({"id": msg_id, "method": "Runtime.evaluate", "params": {
            "expression": expression, "awaitPromise": True, "returnByValue": True}}))
        while True:
            reply = json.loads(await self.ws.read_message())
            if reply.get("id") == msg_id:
                result = reply["result"]
                if "exceptionDetails" in result:
                    raise AssertionError(f"{expression}: {result['exceptionDetails']}")
                return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> object:
        """The value of ``expression`` once truthy (evaluated every 0.1 s; fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body.innerText")
                raise AssertionError(f"{expression} stayed false for {timeout}s; page: {text[:2000]}")
            time.sleep(0.1)

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            async def close() -> None:  # inside its loop: the close frame's future belongs to it
                ws.close()

            self.loop.run_until_complete(close())
            self.loop.close()
        self.proc.kill()
        self.proc.wait(10)
