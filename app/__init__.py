"""flagstream: event-driven feature flags and experimentation on Kafka.

One package per concern, layered (docs/architecture.md): engine < infra < tables <
experiments < control | evaluation < agents | web < main < cli."""

__all__: list[str] = []
