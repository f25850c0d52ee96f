"""Headless Chromium driven through the DevTools protocol over a pipe (no port, no websocket).

``render`` opens a local file as a person's browser would, and returns what the page logged
(console errors and warnings, uncaught exceptions, CSP and other browser errors), every URL it
requested, what a script measured in the rendered DOM, and a full-page PNG screenshot.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol commands from fd 3 and
writes replies and events to fd 4, each a JSON object ended by a NUL byte.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


@dataclass
class Rendered:
    """What a page did in the browser."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    png: bytes = b""
    width: int = 0
    height: int = 0


class _Pipe:
    def __init__(self, chromium: str, profile: Path) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        # The child's ends move above 9 first, so that putting them at fd 3 and 4 (where
        # Chromium looks for them) cannot overwrite one with the other.
        for fd in (cmd_r, resp_w):
            high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
            os.close(fd)
            cmd_r, resp_w = (high, resp_w) if fd == cmd_r else (cmd_r, high)
        script = f'exec "$0" "$@" 3<&{cmd_r} 4>&{resp_w} {cmd_r}<&- {resp_w}>&-'
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", script, chromium, *FLAGS, f"--user-data-dir={profile}"],
            pass_fds=(cmd_r, resp_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(resp_w)
        self._next = 0
        self.inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._resp_r, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self.inbox.put(json.loads(message))
        self.inbox.put(None)

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:  # fmt: skip
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self.inbox.get(timeout=max(0.1, deadline - time.monotonic()))
            if reply is None:
                raise RuntimeError(f"Chromium closed the pipe during {method}")
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        if any(e.get("method") == method for e in self.events):
            return
        while True:
            event = self.inbox.get(timeout=max(0.1, deadline - time.monotonic()))
            if event is None:
                raise RuntimeError(f"Chromium closed the pipe waiting for {method}")
            self.events.append(event)
            if event.get("method") == method:
                return

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, queue.Empty, OSError):
            self.send("Browser.close", timeout=10)
        os.close(self._cmd_w)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors and warnings, uncaught exceptions and browser log errors, as text."""
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            out.append(f"console.{p['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = p.get("exceptionDetails", {})
            out.append(f"exception: {details.get('exception', {}).get('description', details)}")
        elif method == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
            out.append(f"log {p['entry']['level']}: {p['entry'].get('text')}")
    return out


def render(
    chromium: str, page: Path, profile: Path, measure: str, *, width: int = 1280,
    then: str | None = None,
) -> Rendered:  # fmt: skip
    """Open ``page``, run the JavaScript expression ``measure`` (it returns JSON), screenshot it.

    ``then`` is a second expression run after the screenshot (to click something and measure
    again); its result is ``facts["then"]``.
    """
    pipe = _Pipe(chromium, profile)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Network", "Page"):
            pipe.send(f"{domain}.enable", session=session)
        metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
        pipe.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
        pipe.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        pipe.wait_for("Page.loadEventFired")

        def evaluate(expression: str) -> Any:
            result = pipe.send(
                "Runtime.evaluate", {"expression": expression, "returnByValue": True},
                session=session,
            )  # fmt: skip
            if "exceptionDetails" in result:
                raise RuntimeError(f"measuring failed: {result['exceptionDetails']}")
            return json.loads(result["result"]["value"])

        facts = evaluate(measure)
        height = int(evaluate("JSON.stringify(document.documentElement.scrollHeight)"))
        pipe.send(
            "Emulation.setDeviceMetricsOverride", {**metrics, "height": height}, session=session
        )
        shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session)
        if then is not None:
            facts["then"] = evaluate(then)
        requests = [
            e["params"]["request"]["url"]
            for e in pipe.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        return Rendered(
            errors=_problems(pipe.events),
            requests=requests,
            facts=facts,
            png=base64.b64decode(shot["data"]),
            width=width,
            height=height,
        )
    finally:
        pipe.close()
