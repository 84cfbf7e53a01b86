"""The OpenAPI document of the public API, checked against a real `sseplane`
process by Schemathesis: every generated request (schema-valid and not) must be
answered without a 5xx, with a documented status, content type, headers and
body shape; schema-valid requests accepted and invalid ones refused.

`GET /v1/stream` is left out of the generated runs (a 200 is an endless event
stream, which Schemathesis would wait on); its errors are covered by the Rust
tests and by `test_stream_errors_match_the_document` below.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BINARY = Path(os.environ.get("SSEPLANE_BIN", TARGET / "debug" / "sseplane"))
SECRET = "schemathesis-secret-0123456789abcdef"
EXAMPLES = os.environ.get("SCHEMATHESIS_EXAMPLES", "100")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def start(*extra: str):
    assert BINARY.exists(), f"{BINARY} is missing: run cargo build (scripts/test.sh does)"
    public, admin = free_port(), free_port()
    process = subprocess.Popen(
        [str(BINARY), "--listen", f"127.0.0.1:{public}", "--admin-listen", f"127.0.0.1:{admin}", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if get(f"http://127.0.0.1:{admin}/readyz")[0] == 200:
                return process, f"http://127.0.0.1:{public}"
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError("sseplane did not become ready")


@pytest.fixture
def open_service():
    process, url = start()
    yield url
    process.kill()
    process.wait()


@pytest.fixture
def secured_service():
    process, url = start("--jwt-secret", SECRET)
    yield url
    process.kill()
    process.wait()


def schemathesis(url: str, *extra: str) -> subprocess.CompletedProcess:
    st = shutil.which("st") or shutil.which("schemathesis")
    command = [st] if st else [sys.executable, "-m", "schemathesis.cli"]
    return subprocess.run(
        [
            *command, "run", f"{url}/v1/openapi.json",
            "--checks", "all",
            "--exclude-path", "/v1/stream",
            "--max-examples", EXAMPLES,
            "--workers", "2",
            "--seed", "1",
            "--request-timeout", "30",
            "--no-color",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_document_is_served_and_describes_the_public_api(open_service):
    status, headers, body = get(f"{open_service}/v1/openapi.json")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    document = json.loads(body)
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) >= {"/v1/stream", "/v1/publish", "/v1/broadcast"}
    schemas = document["components"]["schemas"]
    assert schemas["PublishRequest"]["additionalProperties"] is False
    assert "bearer" in document["components"]["securitySchemes"]


def test_schemathesis_finds_nothing_with_auth_off(open_service):
    run = schemathesis(open_service)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_schemathesis_finds_nothing_with_a_token(secured_service, mint):
    token = mint(SECRET, {"exp": int(time.time()) + 3600, "sseplane": {"subscribe": ["*"], "publish": ["*"]}})
    run = schemathesis(secured_service, "--header", f"Authorization: Bearer {token}")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_schemathesis_finds_nothing_without_a_token_where_one_is_needed(secured_service):
    # Every publish and broadcast is 401 here: documented, with the challenge.
    run = schemathesis(secured_service)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_stream_errors_match_the_document(open_service):
    _, _, body = get(f"{open_service}/v1/openapi.json")
    operation = json.loads(body)["paths"]["/v1/stream"]["get"]
    for query in ["", "?channel=", "?channel=bad%20name", "?channel=a&lastEventId=nonsense"]:
        status, headers, answer = get(f"{open_service}/v1/stream{query}")
        assert str(status) in operation["responses"], (query, status)
        assert status == 400, (query, status)
        assert headers["content-type"].startswith("application/json")
        error = json.loads(answer)["error"]
        assert set(error) == {"code", "message"} and error["code"] and error["message"]
