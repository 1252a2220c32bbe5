"""`python -m app.cli`: the `flagstream` command, as the supervisor runs its worker."""

from app.cli.commands import main

__all__: list[str] = []

raise SystemExit(main())
