"""What every command does with an error: the project's own errors print their message and exit
with their code (see ``mirasol_edge.errors``); anything else is a bug and shows its traceback."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from mirasol_edge.errors import MirasolError

err = Console(stderr=True, soft_wrap=True)


def fail(command: str, exc: BaseException) -> None:
    if not isinstance(exc, MirasolError):
        raise exc
    err.print(f"[bold red]{command}: {type(exc).__name__}[/]: {escape(str(exc))}", highlight=False)  # [build] is text
    sys.exit(exc.exit_code)
