"""What every command shares: the error convention (exit 0 ok, 1 failure, 2 usage; one line
unless ``--debug``), progress-bar policy, ``--json`` printing and the option spellings."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Optional, TypeVar

T = TypeVar("T")

OK, FAILURE, USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake in the command line (bad option value, missing file): exit 2, one line."""


def common_options() -> argparse.ArgumentParser:
    """Options every command takes (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    parent.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (hidden anyway when "
        "stderr is not a terminal)",
    )  # fmt: skip
    return parent


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the results as one JSON document on stdout"
    )


def add_run_options(parser: argparse.ArgumentParser, batch_size: bool = True) -> None:
    """``--seed``, ``--device`` and (optionally) ``--batch-size``, spelled alike everywhere."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    if batch_size:
        parser.add_argument(
            "--batch-size", type=positive_int, default=64,
            help="images per forward pass (default: %(default)s)",
        )  # fmt: skip


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars unless ``--no-progress`` or stderr is not a terminal (logs, pipes, CI)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def progress(
    items: Iterable[T], args: argparse.Namespace, desc: str, total: Optional[int] = None
) -> Iterator[T]:
    """``items`` with a tqdm bar on stderr when :func:`show_progress` allows one."""
    if not show_progress(args):
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr)


def say(args: argparse.Namespace, text: str) -> None:
    """A human line: on stdout normally, on stderr under ``--json`` (stdout holds the JSON)."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


def print_json(args: argparse.Namespace, doc: Any) -> None:
    """The command's one JSON document, on the real stdout (under ``--json`` everything else a
    command prints goes to stderr, see :func:`pyconcepts.cli.main`)."""
    print(json.dumps(doc, indent=2, default=str), file=args.stdout, flush=True)


def device_of(args: argparse.Namespace) -> Any:
    """``--device`` as a torch.device that exists here."""
    import torch

    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    return device
