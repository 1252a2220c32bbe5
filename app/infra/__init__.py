"""Infrastructure every layer above uses: settings, metrics, topics, the record codec, the key
rule, JSON input limits, the embedded broker, shutdown and log limits."""

__all__: list[str] = []
