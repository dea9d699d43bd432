"""Files blockmix reads but did not just write (shared, hand-edited or damaged): any failure to
read or make sense of one is a one-line `BlockmixError` naming it, never a traceback.

`reading` wraps the code that reads and interprets a file; `read_json` is the common case;
`user_error_line` is the CLI's last line of defence: an operating-system error about a named
path (missing, not a folder, a folder, no permission, disk full) is the user's to fix.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from train.errors import BlockmixError

MALFORMED = (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, yaml.YAMLError)


@contextlib.contextmanager
def reading(path: str | Path, fix: str = "restore it or remove it") -> Iterator[None]:
    """Turn an error raised while reading or interpreting ``path`` into a one-line
    `BlockmixError` naming it and ``fix``. `BlockmixError`s pass through."""
    try:
        yield
    except BlockmixError:
        raise
    except FileNotFoundError:
        raise BlockmixError(f"{path} is missing; {fix}") from None
    except MALFORMED as error:
        detail = (str(error).strip().splitlines() or [""])[0][:120]
        what = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        raise BlockmixError(
            f"{path} is damaged or not what blockmix wrote ({what}); {fix}"
        ) from None


def read_json(path: str | Path, fix: str = "restore it or remove it") -> Any:
    """The JSON content of ``path``; a `BlockmixError` naming it when unreadable."""
    with reading(path, fix):
        return json.loads(Path(path).read_text())


def user_error_line(error: BaseException) -> str | None:
    """The one-line message for an operating-system error about a named path, else None (a
    bug: let its traceback show)."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {error.filename}"
    return None
