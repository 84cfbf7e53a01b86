"""The built-in watch page in headless Chromium, driven over the DevTools protocol:
it opens streams, shows which replica delivered each event with per-replica counts,
and publishes a test event."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import websocket

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BINARY = Path(os.environ.get("SSEPLANE_BIN", TARGET / "debug" / "sseplane"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
TIMEOUT = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


SECRET = "watch-page-secret-0123456789abcdef"


@pytest.fixture(params=["open"])
def sseplane(request):
    assert BINARY.exists(), f"{BINARY} is missing: run cargo build (scripts/test.sh does)"
    public, admin = free_port(), free_port()
    extra = ["--jwt-secret", SECRET] if request.param == "secured" else []
    process = subprocess.Popen(
        [str(BINARY), "--listen", f"127.0.0.1:{public}", "--admin-listen", f"127.0.0.1:{admin}",
         "--replica-id", "ui-replica", "--log-level", "warn", *extra],
    )
    try:
        wait_for("sseplane readiness", lambda: http_ok(f"http://127.0.0.1:{admin}/readyz"))
        yield f"http://127.0.0.1:{public}"
    finally:
        process.kill()
        process.wait()


class Page:
    """One browser tab over the DevTools protocol."""

    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT, suppress_origin=True)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def eval(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture
def page():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (scripts/test.sh installs it)")
    port = free_port()
    profile = tempfile.mkdtemp(prefix="sseplane-ui-")
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def first_page():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    targets = json.load(response)
            except OSError:
                return None
            return next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)

        tab = Page(wait_for("chromium's DevTools", first_page))
        tab.call("Page.enable")
        tab.call("Runtime.enable")
        yield tab
        tab.ws.close()
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_watch_page_shows_delivery_per_replica_and_publishes(sseplane, page):
    page.call("Page.navigate", url=f"{sseplane}/?channels=demo&connections=2&connect=1")
    wait_for("the page", lambda: page.eval("document.readyState") == "complete")
    wait_for("two open streams on the replica",
             lambda: page.eval("document.querySelector('.replica .status')?.textContent") == "2 open stream(s)")
    assert page.eval("document.querySelector('.replica span').textContent") == "ui-replica"

    # Publish through the page's own form.
    page.eval("""
        document.getElementById('pub-event').value = 'greeting';
        document.getElementById('pub-data').value = '{"hello":"browser"}';
        document.getElementById('send').click();
    """)
    wait_for("the event on both streams", lambda: page.eval("document.querySelectorAll('#events tr').length") == 2)
    rows = page.eval("[...document.querySelectorAll('#events tr')].map(r => [...r.children].map(c => c.textContent))")
    assert sorted(row[0] for row in rows) == ["1", "2"]
    for stream, replica, event_id, event, data in rows:
        assert replica == "ui-replica"
        assert event == "greeting"
        assert json.loads(data) == {"hello": "browser"}
        assert event_id
    assert "published, id " in page.eval("document.getElementById('pub-status').textContent")
    assert page.eval("document.querySelector('.replica b').textContent") == "2"

    # An event published from outside arrives too, with the same id on both streams.
    request = urllib.request.Request(
        f"{sseplane}/v1/publish", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"channel": "demo", "data": {"n": 2}}).encode())
    with urllib.request.urlopen(request) as response:
        published_id = json.load(response)["results"][0]["id"]
    wait_for("the outside event", lambda: page.eval("document.querySelectorAll('#events tr').length") == 4)
    ids = page.eval("[...document.querySelectorAll('#events tr')].slice(0, 2).map(r => r.children[2].textContent)")
    assert ids == [published_id, published_id]

    shot = page.call("Page.captureScreenshot", format="png")["data"]
    out = Path(os.environ.get("SSEPLANE_UI_SCREENSHOT", tempfile.gettempdir())) / "sseplane-watch-page.png"
    import base64
    out.write_bytes(base64.b64decode(shot))


@pytest.mark.parametrize("sseplane", ["secured"], indirect=True)
def test_the_watch_page_sends_its_token_when_auth_is_on(sseplane, page, mint):
    page.call("Page.navigate", url=f"{sseplane}/?channels=demo&connections=1&connect=1")
    wait_for("the page", lambda: page.eval("document.readyState") == "complete")
    wait_for("an open stream", lambda: page.eval("document.querySelector('.replica .status')?.textContent") == "1 open stream(s)")

    # Without a token the publish is refused, and the page says why.
    page.eval("document.getElementById('send').click()")
    wait_for("the refusal", lambda: page.eval("document.getElementById('pub-status').textContent").startswith("401"))

    token = mint(SECRET, {"sseplane": {"publish": ["demo"], "subscribe": ["demo"]}})
    page.eval(f"document.getElementById('token').value = {json.dumps(token)}; document.getElementById('send').click();")
    wait_for("the event on the stream", lambda: page.eval("document.querySelectorAll('#events tr').length") == 1)
    assert "published, id " in page.eval("document.getElementById('pub-status').textContent")
