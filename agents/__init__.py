"""Kafka in: one module per agent (flag changes, evaluation requests) and the dead-letter
sender they share."""

__all__: list[str] = []
