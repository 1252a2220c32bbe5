# Typed stubs for aiokafka.admin (see __init__.pyi).

from typing import Any

class NewTopic:
    name: str
    num_partitions: int
    replication_factor: int
    def __init__(
        self,
        name: str,
        num_partitions: int,
        replication_factor: int,
        replica_assignment: dict[int, list[int]] | None = None,
        topic_configs: dict[str, str] | None = None,
    ) -> None: ...

class AIOKafkaAdminClient:
    def __init__(self, **configs: Any) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def list_topics(self) -> list[str]: ...
    async def create_topics(
        self, new_topics: list[NewTopic], timeout_ms: int | None = None, validate_only: bool = False
    ) -> Any: ...
    def __getattr__(self, name: str) -> Any: ...

def __getattr__(name: str) -> Any: ...
