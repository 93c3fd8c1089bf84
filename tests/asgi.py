"""A FastAPI host for a router under test: mounted under a prefix, its lifespan running, an httpx
client on it (in process, no socket)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI


@asynccontextmanager
async def mounted(router: Any, prefix: str, app: FastAPI | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An app with ``router`` under ``prefix``, its lifespan running, and an httpx client on it."""
    host = app or FastAPI()
    host.include_router(router, prefix=prefix)
    async with host.router.lifespan_context(host):
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://dashboard.test{prefix}") as client:
            yield client
