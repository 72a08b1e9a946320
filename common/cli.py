"""What every console script shares: logging set-up and turning known failures into one-line errors.

Bad input (a bad flag, a broken data folder, an unreachable server) ends the command with
``<prog>: error: <reason>`` and a non-zero status. Only ``--verbose`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from pydantic import BaseModel

from medfed.common.config import did_you_mean, field_default
from medfed.common.errors import USER_ERRORS, MedfedError

log = logging.getLogger("medfed")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, what a shell tool exits with when its output's reader closed it"""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line: what is wrong, the flag meant when one was mistyped,
    and where the help is. argparse's own error prints the whole usage (30 lines for fed-server) first.
    """

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            flags = [o for action in self._actions for o in action.option_strings]
            words = [w.split("=", 1)[0] for w in message.split()[2:] if w.startswith("-")]
            message += "".join(dict.fromkeys(did_you_mean(w, flags) for w in words))
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def command_parser(
    prog: str, description: str, examples: str, settings: type[BaseModel]
) -> tuple[Parser, Callable[[str], object]]:
    """The parser every command starts from: one-line errors, the examples as its epilog, and flags that
    stay absent unless given (so a TOML file, then the settings' defaults, fill the rest); with it a
    function giving a setting's default, for help texts."""
    parser = Parser(
        prog=prog,
        description=description,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    return parser, lambda name: field_default(settings, name)


class CliError(MedfedError):
    """A failure to report as one line; ``exit_code`` says which kind."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    if not verbose:
        for noisy in ("PIL", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def run_command(prog: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)
    try:
        return body(argv)
    except CliError as exc:
        _fail(prog, str(exc), verbose)
        return exc.exit_code
    except USER_ERRORS as exc:
        _fail(prog, str(exc), verbose)
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush fails silently
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: still one line unless --verbose
        _fail(prog, f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for details)", verbose)
        return EXIT_FAILURE


def _fail(prog: str, message: str, verbose: bool) -> None:
    if verbose:
        log.exception("%s failed", prog)
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()
