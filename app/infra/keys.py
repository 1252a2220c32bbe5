"""What may name an environment or a flag: one rule for the API, Kafka and the table.

Environment and flag keys end up in URLs, Kafka keys and RocksDB keys separated by "/".
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["KEY_PATTERN", "valid_key"]

# Matched whole (`fullmatch`): `$` would let a final newline through.
KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def valid_key(key: str) -> bool:
    """Whether `key` may name an environment or a flag."""
    return KEY_PATTERN.fullmatch(key) is not None
