"""Every example app runs and does what its docstring says."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from examples import counter

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


async def test_counter_example(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(counter.make_app())
    first = await (await client.get("/")).text()
    second = await (await client.get("/")).text()
    assert first == "You have been here 1 time(s).\n"
    assert second == "You have been here 2 time(s).\n"
