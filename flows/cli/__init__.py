"""The ``sonufy`` command line.

One module per command group registers its commands' options and the
function that runs each (``set_defaults(handler=...)``): ``build`` (build,
demo), ``query`` (recommend, path, radio, sql), ``model`` (train, evaluate,
retrain), ``playlists`` (playlist) and ``operate`` (landscape, nightly, gc,
standin); ``common`` holds
what they share. A command's heavy imports happen in its handler, so that
``sonufy recommend`` and ``sonufy sql`` start in a moment.
"""

from __future__ import annotations

import argparse
import os
import sys

from flows.cli import build, model, operate, playlists, query
from flows.cli.common import DEFAULT_DB, CommandError

# Offline by design: no telemetry from Prefect or Great Expectations (none of
# the modules above imports either; their handlers do).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

__all__ = ["DEFAULT_DB", "CommandError", "main"]

# The commands in the order `sonufy --help` lists them.
_COMMANDS = (
    build.add_build, query.add_recommend, query.add_path, query.add_radio, build.add_demo,
    model.add_train, model.add_evaluate, operate.add_landscape, operate.add_nightly, model.add_retrain,
    operate.add_gc, query.add_sql, playlists.add_playlist, operate.add_standin,
)

# Commands that run flows with batch loops: they draw progress bars in a terminal.
_LONG_COMMANDS = ("build", "demo", "train", "nightly", "retrain")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonufy", description="Recommend music by how it sounds, and by nothing else."
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected failure (also SONUFY_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``sonufy`` command; its exit status (2: an error the command names)."""
    args = _parser().parse_args(argv)
    if args.command in _LONG_COMMANDS:
        from tasks.progress import terminal_bars

        with terminal_bars():
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from sonufy_model.errors import BadCredentials, ServiceError
    from sonufy_model.store import DatabaseLocked, SchemaTooNew, TrackNotFound

    try:
        code = args.handler(args)
    except (CommandError, TrackNotFound, ValueError, FileNotFoundError, DatabaseLocked, SchemaTooNew,
            ServiceError) as error:
        print(f"sonufy {args.command}: error: {error}", file=sys.stderr)
        # Bad input (credentials included) exits 2; a service that failed us,
        # which the message names, 1.
        return 1 if isinstance(error, ServiceError) and not isinstance(error, BadCredentials) else 2
    except Exception as error:  # one of ours: one line for the user, the traceback on request
        if args.debug or os.environ.get("SONUFY_DEBUG", "") not in ("", "0"):
            raise
        print(f"sonufy {args.command}: failed: {type(error).__name__}: {error}\n"
              "  (this is Sonufy's fault, not your input's; `sonufy --debug ...` or SONUFY_DEBUG=1 shows where)",
              file=sys.stderr)
        return 1
    return code or 0
