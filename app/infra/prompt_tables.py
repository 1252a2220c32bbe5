"""Faust's table manager without its one-second nap at start.

Faust's `TableManager.on_start` sleeps a second before it registers the tables' changelog
channels and starts recovery, and the conductor waits for that registration before it
subscribes the agents' topics: every worker start (and every restart in a deployment's roll)
waited that second for nothing. A worker declares its Faust tables, if any, when it is built
(app.main), before the app starts, so there is nothing to wait for.
"""

from __future__ import annotations

from faust.tables import TableManager

__all__ = ["PromptTableManager"]


class PromptTableManager(TableManager):
    """`TableManager` that registers its channels and starts recovery at once
    (`faust.App(..., TableManager=PromptTableManager)`)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()
