"""Headless Chromium driven over its DevTools protocol on a pipe (--remote-debugging-pipe): no extra package.

Messages are JSON objects separated by NUL bytes, written to the browser's fd 3 and read from its fd 4.
`open_page` loads a file, waits for its load event and returns a Page that evaluates JavaScript in it and
keeps every console error and uncaught exception the page produced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest


def chromium() -> str:
    """The browser's path; outside CI a missing browser skips the test, under CI=true it fails it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI"):
        pytest.fail("CI must install chromium (./run installs Debian's chromium package)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _as_fds_3_and_4(commands: int, replies: int) -> None:
    """In the child: the pipe ends become fds 3 and 4 (via high numbers, in case either already is 3 or 4)."""
    os.dup2(commands, 200)
    os.dup2(replies, 201)
    os.dup2(200, 3)
    os.dup2(201, 4)


class Page:
    """One tab of a headless browser, spoken to through the pipe."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # The child sees our pipe ends as its fds 3 (commands in) and 4 (replies out).
        args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(
            args, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _as_fds_3_and_4(to_browser, from_browser),
        )  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        self.deadline, self.buffer, self.next_id = time.monotonic() + timeout, b"", 0
        self.errors: list[str] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session=True)
        self.call("Page.navigate", session=True, url=url)
        self._wait_event("Page.loadEventFired")

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self.next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise: its result) in the page; a throw fails the test."""
        result = self.call(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _wait_event(self, name: str) -> None:
        self._wait(lambda m: m.get("method") == name)

    def _wait(self, done: Any) -> dict[str, Any]:
        while True:
            while b"\0" not in self.buffer:
                if time.monotonic() > self.deadline:
                    raise TimeoutError("chromium did not answer in time")
                chunk = os.read(self._read, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            message = json.loads(raw)
            self._note_error(message)
            if done(message):
                return message

    def _note_error(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(str(params["exceptionDetails"]))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(str(params.get("args")))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(str(params["entry"]))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):  # it may close before it answers
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)
        shutil.rmtree(self.profile, ignore_errors=True)


def open_page(path: Path) -> Page:
    return Page(path.resolve().as_uri())
