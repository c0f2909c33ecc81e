"""A background loop of the server: call ``tick`` every ``interval_s()`` seconds until the server shuts down; a
failing tick is logged and retried on the next one, never ends the loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)


class _Server(Protocol):
    shutting_down: bool


async def every(
    server: _Server, interval_s: Callable[[], float], tick: Callable[[], Awaitable[None]], what: str
) -> None:
    """Run ``tick`` every ``interval_s()`` seconds (read each time) while ``server`` is not shutting down."""
    while True:
        await asyncio.sleep(interval_s())
        if server.shutting_down:
            return
        try:
            await tick()
        except asyncio.CancelledError:
            raise
        except Exception:  # a log or registry hiccup must not end the loop: try again next tick
            log.warning("%s failed; retrying", what, exc_info=True)
