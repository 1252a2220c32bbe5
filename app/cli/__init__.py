"""The `flagstream` command: the local stack's supervisor, a worker, the broker, flags, restore."""

__all__: list[str] = []
