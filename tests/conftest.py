"""Fixtures shared by the Python tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest


def hs256(secret: str, claims: dict) -> str:
    """A JWT signed with HS256, the way a backend mints one for sseplane."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


@pytest.fixture
def mint():
    """`mint(secret, claims)` returns an HS256 token."""
    return hs256
