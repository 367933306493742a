"""``smysl`` command line. Each subcommand lives in ``smysl/commands/<name>.py`` and defines
``HELP``, ``add_arguments(parser)``, ``run(args) -> int`` and ``EXAMPLES`` (or, for a module
holding several related commands, an object with those attributes: ``"module:NAME"``); heavy
imports stay inside ``run`` so that ``smysl --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from smysl.commands import HelpFormatter, examples

#: Subcommand name -> module. Add a line here to add a command.
COMMANDS: dict[str, str] = {
    "embed": "smysl.commands.embed",
    "eval": "smysl.commands.eval",
    "serve": "smysl.commands.serve",
    "rerank": "smysl.commands.rerank",
    "index": "smysl.commands.index",
    "classify": "smysl.commands.classify",
    "cluster": "smysl.commands.cluster",
    "dedup": "smysl.commands.dedup",
    "tune": "smysl.commands.tune",
    "models": "smysl.commands.models:MODELS",
    "pull": "smysl.commands.models:PULL",
    "show": "smysl.commands.models:SHOW",
}


#: What ``smysl --help`` shows first: the commands a newcomer starts with.
START = (("smysl serve --model qwen3-embedding:0.6b", "an embedding server on 127.0.0.1:8000"),
         ("smysl embed --model qwen3-embedding:0.6b -i docs.txt -o docs.jsonl",
          "a vector per line"),
         ("smysl index add kb docs/ --model qwen3-embedding:0.6b", "a searchable index"),
         ("smysl index search kb \"how do I reset my password?\"", "then search it"),
         ("smysl COMMAND --help", "each command's options and examples"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smysl", description="Qwen3-Embedding: embed, serve, index and search, evaluate.",
        epilog=examples(START), formatter_class=HelpFormatter)
    from smysl import __version__

    parser.add_argument("--version", action="version", version=f"smysl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, target in COMMANDS.items():
        module_name, _, attr = target.partition(":")
        command = importlib.import_module(module_name)
        if attr:
            command = getattr(command, attr)
        p = sub.add_parser(name, help=command.HELP, description=command.HELP,
                           epilog=examples(command.EXAMPLES), formatter_class=HelpFormatter)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from smysl.base import UpstreamError
    from smysl.tokenize import InputTooLongError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    rest = vars(args).get("_rest")  # a command's positional list that may follow its options
    if extra and rest:
        # `index search kb -k 2 "reset password"`: argparse ends a `nargs="*"` positional at
        # the first option and would refuse the words after it; after `--` every word is one
        # (`-- "-5 градусов"`)
        cut = extra.index("--") if "--" in extra else len(extra)
        head, tail = extra[:cut], extra[cut + 1 :]
        if not any(x.startswith("-") for x in head):
            setattr(args, rest, [*vars(args)[rest], *head, *tail])
            extra = []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # here, where a reader gone (BrokenPipeError) is caught below
        return code
    except InputTooLongError as e:  # worded with the flag, and counted from 1 as lines are
        what = f"input {e.index + 1}"
        print(f"smysl {args.command}: error: {e.describe(what, audience='cli')}",
              file=sys.stderr)
        return 2
    # A path that is a folder, or one not readable or writable, is a mistake in the arguments
    # like a missing file: one line, not a traceback.
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError, ImportError) as e:
        print(f"smysl {args.command}: error: {_said(e)}", file=sys.stderr)
        return 2
    except UpstreamError as e:  # a paid API or another server failed (its timeouts too)
        print(f"smysl {args.command}: error: {_said(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout's reader left (`smysl show ... | head`): stop as Unix tools do on SIGPIPE,
        # without a traceback; stdout goes to /dev/null so the exit's flush cannot raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:
        # The system refused: a full disk, a name too long, a symlink loop, a read-only
        # place. One line naming the file, status 1 (the environment failed, not the
        # arguments); outputs are replaced whole (files.replacing), so none is left half.
        where = f"{e.filename}: " if e.filename else ""
        print(f"smysl {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        try:
            sys.stdout.flush()
        except OSError:  # stdout itself failed (> /dev/full): the exit's flush must not retry
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _said(error: BaseException) -> str:
    """An error as a command says it: a provider's partial failure without its advice to embed
    the same texts again (that resumes in the same process; a command's ends here)."""
    from smysl.providers.errors import IncompleteEmbeddingError

    return error.summary if isinstance(error, IncompleteEmbeddingError) else str(error)


if __name__ == "__main__":
    sys.exit(main())
