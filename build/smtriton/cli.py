"""The `smtriton` command line: one subcommand per step from checkout to endpoint.

Each subcommand is a module with register(subparsers), which adds its parser
and sets `run`; adding one (e.g. `package`) is one entry in COMMANDS.
Errors a user can act on print as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from smtriton.errors import SmtritonError, explain_aws_error

log = logging.getLogger(__name__)

# Modules of smtriton, in the order a person uses them.
COMMANDS = (
    "image",
    "login",
    "push",
    "package",
    "deploy",
    "transform",
    "invoke",
    "delete",
)

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtriton",
        description="Build, push, deploy and call the SageMaker Triton serving image.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print results and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"smtriton.{name}").register(subparsers)
    return parser


def configure_logging(quiet: bool) -> None:
    """Progress goes to stderr as plain lines; stdout carries only results."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("smtriton: %(message)s"))
    root = logging.getLogger("smtriton")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    try:
        return args.run(args)
    except SmtritonError as error:
        message = str(error)
    except KeyboardInterrupt:
        print("smtriton: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        explained = explain_aws_error(error)
        if explained is None:
            raise
        message = explained
    print(f"smtriton {args.command}: error: {message}", file=sys.stderr)
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
