"""The data plane: live compiled flags, the evaluator, the Kafka request/result wire format
and its client, evaluation statistics."""

__all__: list[str] = []
