"""The control plane: decide flag changes, write them and wait for their outcome, flag files,
the admin client, restore."""

__all__: list[str] = []
