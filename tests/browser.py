"""A real headless Chromium for tests, driven over the DevTools protocol through a pipe.

    with Browser() as browser:                        # or the `browser` fixture (conftest.py)
        page = browser.open(path_to_html)             # waits for the load event
        page.wait_for("document.querySelector('.main-svg') !== null")
        assert page.eval("document.title") == "vitscope · run"
        assert page.dialogs == [] and page.exceptions == []

No Python package is needed: Chromium is started with `--remote-debugging-pipe` and reads
JSON commands from fd 3 and answers on fd 4 (NUL-terminated), the transport Puppeteer uses.
Each page records what would betray a script that should not have run: JavaScript dialogs
(alert/confirm/prompt, dismissed at once), console messages and uncaught exceptions.

Chromium comes from the system (Debian: `apt-get install chromium`; `.ci/run` installs it).
`VITSCOPE_CHROMIUM` names another binary. When none is found, `find_chromium` raises, so the
browser tests FAIL; on a dev machine without it, `VITSCOPE_SKIP_BROWSER_TESTS=1` skips them
instead (CI never sets it).
"""
from __future__ import annotations

import functools
import http.server
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

SKIP_ENV = "VITSCOPE_SKIP_BROWSER_TESTS"
BINARY_ENV = "VITSCOPE_CHROMIUM"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags that work on a closed-network CI machine as root: no sandbox (root), no GPU, and none
# of the background connections Chromium makes at start (they are refused here, many at once).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--no-default-browser-check", "--hide-scrollbars", "--window-size=1400,1000")


class BrowserUnavailable(RuntimeError):
    pass


def find_chromium() -> str:
    """The Chromium binary to use; BrowserUnavailable (with the fix) when there is none."""
    named = os.environ.get(BINARY_ENV)
    if named:
        if shutil.which(named) or Path(named).is_file():
            return shutil.which(named) or named
        raise BrowserUnavailable(f"{BINARY_ENV}={named} is not an executable.")
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserUnavailable(
        "No Chromium found for the browser tests (looked for " + ", ".join(CANDIDATES) +
        "); install it (Debian/Ubuntu: apt-get install chromium), name it with "
        f"{BINARY_ENV}=/path/to/chrome, or set {SKIP_ENV}=1 to skip these tests on a dev "
        "machine.")


class BrowserError(RuntimeError):
    pass


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:   # no request log on the test output
        pass


class Browser:
    """One headless Chromium process; `open()` gives a Page per file or URL."""

    def __init__(self, extra_args: tuple[str, ...] | list[str] = (), *, timeout: float = 30.0,
                 binary: str | None = None) -> None:
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="vitscope-chromium-")
        self._ids = itertools.count(1)
        self._pending: dict[int, dict] = {}
        self._events: dict[str, list[dict]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._write_lock = threading.Lock()
        self._servers: dict[Path, http.server.ThreadingHTTPServer] = {}
        cmd_r, self._cmd_w = os.pipe()      # we write commands, Chromium reads fd 3
        self._out_r, out_w = os.pipe()      # Chromium writes fd 4, we read

        def wire_fds() -> None:   # runs in the child before exec
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        args = [binary or find_chromium(), *FLAGS, *extra_args, f"--user-data-dir={self._profile}",
                "--remote-debugging-pipe", "about:blank"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        preexec_fn=wire_fds, pass_fds=(3, 4),
                                        start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.version = self.send("Browser.getVersion")["product"]

    # ------------------------------------------------------------------------- transport
    def _drain_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line)
            del self._stderr[:-50]

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._out_r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self._cond:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._pending[msg["id"]] = msg
                        continue
                    session = msg.get("sessionId", "")
                    self._events.setdefault(session, []).append(msg)
                    if msg.get("method") == "Page.javascriptDialogOpening":
                        # Dismissed at once (the page is blocked until then); no waiting for
                        # the answer here, this thread is the one that reads answers.
                        self._write({"id": next(self._ids), "sessionId": session,
                                     "method": "Page.handleJavaScriptDialog",
                                     "params": {"accept": False}})
                self._cond.notify_all()

    def _write(self, msg: dict) -> None:
        data = json.dumps(msg).encode() + b"\0"
        with self._write_lock:
            while data:
                data = data[os.write(self._cmd_w, data):]

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        """One DevTools command; its result, or BrowserError with the protocol's message."""
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._write(msg)
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while msg_id not in self._pending:
                if self._closed:
                    raise BrowserError(f"Chromium exited during {method}: {self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"Chromium did not answer {method} in time")
                self._cond.wait(left)
            reply = self._pending.pop(msg_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def events(self, session: str) -> list[dict]:
        with self._cond:
            return list(self._events.get(session, []))

    def wait_event(self, session: str, method: str, since: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                evs = self._events.get(session, [])
                for ev in evs[since:]:
                    if ev.get("method") == method:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise BrowserError(f"no {method} within {timeout:.0f} s")
                self._cond.wait(left)

    def log(self) -> str:
        return b"".join(self._stderr[-10:]).decode(errors="replace")[-2000:]

    # ----------------------------------------------------------------------------- pages
    def serve(self, folder: str | Path) -> str:
        """Serve `folder` on 127.0.0.1 (a port of its own, for this browser's lifetime) and
        return its base URL. Pages opened through it share Chromium's HTTP and compiled-code
        caches, so the tenth page using one plotly.min.js loads ~4x faster than from file://."""
        folder = Path(folder).resolve()
        if folder not in self._servers:
            handler = functools.partial(_QuietHandler, directory=str(folder))
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers[folder] = server
        return f"http://127.0.0.1:{self._servers[folder].server_port}/"

    def open(self, target: str | Path, *, root: str | Path | None = None,
             timeout: float | None = None) -> "Page":
        """A new tab showing `target` (a file path or a URL), after its load event. With
        `root` (a folder above a file `target`) the file is served over HTTP (`serve`)."""
        if root is not None:
            rel = Path(target).resolve().relative_to(Path(root).resolve()).as_posix()
            url = self.serve(root) + urllib.parse.quote(rel)
        elif str(target).startswith(("http:", "https:", "file:", "about:", "data:")):
            url = str(target)
        else:
            url = Path(target).resolve().as_uri()
        target_id = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target_id, "flatten": True})["sessionId"]
        page = Page(self, target_id, session)
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        since = len(self.events(session))
        reply = self.send("Page.navigate", {"url": url}, session=session)
        if reply.get("errorText"):
            raise BrowserError(f"cannot open {url}: {reply['errorText']}")
        self.wait_event(session, "Page.loadEventFired", since, timeout or self.timeout)
        return page

    def close(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        self._servers.clear()
        if self.process.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except BrowserError:
                pass
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One tab. Dialogs are dismissed as they open and recorded in `dialogs`."""

    def __init__(self, browser: Browser, target_id: str, session: str) -> None:
        self.browser, self.target_id, self.session = browser, target_id, session

    def _events(self, method: str) -> list[dict]:
        return [e["params"] for e in self.browser.events(self.session) if e.get("method") == method]

    @property
    def dialogs(self) -> list[str]:
        """Messages of every alert/confirm/prompt the page opened (each dismissed at once)."""
        return [d.get("message", "") for d in self._events("Page.javascriptDialogOpening")]

    @property
    def console(self) -> list[str]:
        """Every console message (console.log and friends, and the browser's own log)."""
        out = []
        for call in self._events("Runtime.consoleAPICalled"):
            out.append(" ".join(str(a.get("value", a.get("description", "")))
                                for a in call.get("args", [])))
        out += [e["entry"].get("text", "") for e in self._events("Log.entryAdded")]
        return out

    @property
    def exceptions(self) -> list[str]:
        """Uncaught JavaScript exceptions, as text."""
        out = []
        for e in self._events("Runtime.exceptionThrown"):
            d = e.get("exceptionDetails", {})
            out.append(d.get("exception", {}).get("description") or d.get("text", ""))
        return out

    def eval(self, expression: str, *, timeout: float | None = None) -> Any:
        """The value of a JavaScript expression (promises are awaited)."""
        reply = self.browser.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
            "userGesture": True}, session=self.session, timeout=timeout)
        if "exceptionDetails" in reply:
            d = reply["exceptionDetails"]
            raise BrowserError(f"{expression[:80]!r} raised: "
                               f"{d.get('exception', {}).get('description') or d.get('text')}")
        return reply.get("result", {}).get("value")

    def wait_for(self, condition: str, timeout: float = 20.0) -> Any:
        """Poll a JavaScript expression until it is truthy; BrowserError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(condition)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {condition!r} "
                                   f"(exceptions: {self.exceptions[:3]})")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self.browser.send("Target.closeTarget", {"targetId": self.target_id}, timeout=5)
        except BrowserError:
            pass
