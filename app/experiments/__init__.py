"""Experiments: the exposures every evaluation of an experiment flag emits (analytics next)."""

__all__: list[str] = []
