"""The ``cist-bench`` command line.

Sub-commands land with the issues that build them; ``ls`` lists what is registered.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _cmd_ls(args: argparse.Namespace) -> int:
    what = args.what
    if what == "losses":
        from cist_bench.losses import list_losses, loss_params

        for name in list_losses():
            params = ", ".join(
                f"{p.name}={p.default!r}" for p in loss_params(name).values()
            )
            print(f"{name:<18} {params}")
        return 0
    if what == "models":
        from cist_bench.models import list_models

        print("\n".join(list_models()))
        return 0
    if what == "tasks":
        from cist_bench.data import list_tasks

        print("\n".join(list_tasks()))
        return 0
    raise AssertionError(what)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cist-bench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list registered losses, models or tasks")
    ls.add_argument("what", choices=["losses", "models", "tasks"], nargs="?", default="losses")
    ls.set_defaults(func=_cmd_ls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
