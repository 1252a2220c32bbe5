"""HTTP in: one API class per surface (OFREP and its fast path, admin, evaluate, streams,
exposures, ops), each with its `routes()`."""

__all__: list[str] = []
