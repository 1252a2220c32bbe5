"""`python -m app.cli`: the `flagstream` command, as the supervisor runs its worker."""

from app.cli.commands import main

raise SystemExit(main())
