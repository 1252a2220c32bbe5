"""Tables every worker holds in full (one module per table) and their replication from
the changelog."""

__all__: list[str] = []
