# Typed stubs for aiokafka.errors (see __init__.pyi): the base class flagstream catches.

from typing import Any

class KafkaError(RuntimeError):
    retriable: bool
    invalid_metadata: bool

def __getattr__(name: str) -> Any: ...
