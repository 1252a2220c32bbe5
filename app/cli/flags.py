"""`flagstream flags` and `flagstream restore`: the admin API from the command line.

`flags` lists, shows, sets, deletes and applies flagd files (the file is the truth for the
flags it names; `--prune` deletes the others); `restore` writes a data dir's flags and kept
history into a cluster that lost its data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

from app.control.client import AdminClient, AdminError
from app.control.flagfile import flags_of
from app.control.flagfile import plan as plan_apply
from app.control.restore import plan, read_table, restore, totals

__all__ = ["RESTORE_JOBS", "admin_token", "apply_file", "run_flags", "run_restore"]

RESTORE_JOBS = 8  # flags restored at once (each flag's versions in order): ~2x one at a time
PRETTY = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS


def admin_token(args: argparse.Namespace) -> str:
    """`--token`, else FLAGSTREAM_ADMIN_TOKEN or the file FLAGSTREAM_ADMIN_TOKEN_FILE names, as
    the worker reads it (both variables set: a ValueError naming them, never the token)."""
    # Here, not at the top: the settings module imports Faust (half a second of every command).
    from app.infra.settings import secret

    token: str | None = args.token
    return token or secret("FLAGSTREAM_ADMIN_TOKEN")


def apply_file(client: AdminClient, path: Path, env: str, *, prune: bool, dry_run: bool) -> int:
    """Make the environment's flags equal to the file's; print and return the changes made."""
    desired = flags_of(orjson.loads(path.read_bytes()))
    versions = {row["flag"]: row["version"] for row in client.summary(env)}
    current = client.flags(env)
    created, updated, deleted = plan_apply(desired, current, prune)
    for key in created:
        if not dry_run:
            client.put(env, key, desired[key])
        print(f"created {env}/{key}")
    for key in updated:
        if not dry_run:
            client.put(env, key, desired[key], versions[key])
        print(f"updated {env}/{key}")
    for key in deleted:
        if not dry_run:
            client.delete(env, key, versions[key])
        print(f"deleted {env}/{key}")
    unchanged = len(desired) - len(created) - len(updated)
    print(
        f"{len(created)} created, {len(updated)} updated, {len(deleted)} deleted, "
        f"{unchanged} unchanged"
    )
    return len(created) + len(updated) + len(deleted)


def run_flags(args: argparse.Namespace) -> int:
    client = AdminClient(args.url, admin_token(args))
    env: str = args.env
    if args.action == "apply":
        apply_file(client, Path(args.file), env, prune=args.prune, dry_run=args.dry_run)
    elif args.action == "export":
        text = orjson.dumps({"flags": client.flags(env)}, option=PRETTY).decode() + "\n"
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
    elif args.action == "list":
        for row in client.summary(env):
            print(f"{row['flag']:<32} {row['state'] or '':<9} v{row['version']:<5} {row['actor']}")
    elif args.action == "get":
        reply = client.flag(env, args.key)
        if reply.status >= 400:
            raise AdminError(reply)
        print(f"# {env}/{args.key} version {reply.headers.get('X-Flag-Version')}")
        print(orjson.dumps(reply.body, option=orjson.OPT_INDENT_2).decode())
    elif args.action == "history":
        for version in client.history(env, args.key):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(version["updated_at"]))
            print(
                f"v{version['version']:<5} {version['op']:<7} {stamp} "
                f"{version['actor']} {version['change_id']}"
            )
    elif args.action in ("on", "off"):
        result = client.set_state(env, args.key, "ENABLED" if args.action == "on" else "DISABLED")
        print(f"{env}/{args.key} is {result['definition']['state']} (version {result['version']})")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """Restore a stopped worker's table through the admin API; 1 when versions were refused."""
    client = AdminClient(args.url, admin_token(args))
    with read_table(Path(args.source)) as table:
        steps = plan(table, args.env)
    outcomes = restore(client, steps, force=args.force, jobs=args.jobs)
    print(f"restored from {Path(args.source).resolve()}: {totals(outcomes)}")
    return 1 if any(outcome.refused for outcome in outcomes) else 0
