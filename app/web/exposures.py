"""`POST /api/v1/exposures`: exposures from SDKs that evaluate flags themselves.

The SDK key selects the environment. Each item is checked on its own (the flag exists, the
variant is one of its variants, the targeting key is there), so one bad item is reported by
index while the rest are produced, exactly like exposures of server-side evaluations. The
envelope, the shared field checks and the acknowledged answer are `app.web.sdk_batches`'.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.evaluation.live_flags import LiveFlags
from app.experiments.exposures import ExposureSink, Pending, exposure_id
from app.infra.keys import valid_key
from app.infra.metrics import Metrics
from app.infra.settings import Settings
from app.web.auth import Credentials
from app.web.sdk_batches import ItemCheck, Problems, SdkBatches
from tables.replication import FlagReplication

__all__ = ["ExposuresApi", "check_item"]


def check_item(
    live_flags: LiveFlags, environment: str, index: int, item: Any, now: float
) -> Pending | Problems:
    """The exposure an item describes, or its problems (paths into the request body)."""
    at = f"$.exposures[{index}]"
    if not isinstance(item, dict):
        return [{"path": at, "message": "must be an object"}]
    check = ItemCheck(at, item)
    key, variant, targeting_key = (
        check.text("flag"),
        check.text("variant"),
        check.text("targeting_key"),
    )
    live = live_flags.get(environment, key) if key and valid_key(key) else None
    if key and live is None:
        check.problem("flag", f"no flag {key!r} in {environment!r}")
    elif (
        live is not None and live.flag is not None and variant and variant not in live.flag.variants
    ):
        check.problem("variant", f"{key!r} has no variant {variant!r}")
    version = item.get("flag_version", live.version if live else 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        check.problem("flag_version", "must be a positive integer")
    timestamp = check.timestamp(now)
    ident = check.ident("exposure_id", exposure_id)
    if check.problems or live is None:  # no live flag is always one of the problems (above)
        return check.problems
    experiment = live.experiment or key
    return (
        environment,
        key,
        variant,
        version,
        targeting_key,
        timestamp,
        "sdk",
        ident,
        experiment,
    )


class ExposuresApi:
    """`POST /api/v1/exposures`, produced through this worker's exposure sink."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        live_flags: LiveFlags,
        replication: FlagReplication,
        sink: ExposureSink,
        metrics: Metrics,
    ) -> None:
        self.live_flags = live_flags
        self.batches = SdkBatches(
            settings, credentials, replication, "exposures", sink, metrics.exposures
        )

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/v1/exposures", self.post)]

    def check(self, environment: str, index: int, item: Any, now: float) -> Pending | Problems:
        return check_item(self.live_flags, environment, index, item, now)

    async def post(self, request: web.Request) -> web.Response:
        return await self.batches.post(request, self.check)
