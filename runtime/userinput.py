"""One-line messages for what users hand us: files to read, tables of known keys.

Shared by the worker config, scenarios and the CLI, so a typo or a missing file reads the
same wherever it is made (each caller wraps the message in its own error type).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable


def read_text(path: str | Path, kind: str = "file") -> str:
    """The UTF-8 text of ``path``; a ValueError naming the file and what went wrong."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a {kind}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None


def unknown_keys(given: Iterable[str], known: set[str]) -> str | None:
    """``unknown key(s) idd (did you mean 'id'?); known: ...``, or None if all are known."""
    unknown = sorted(set(given) - known)
    if not unknown:
        return None
    guesses = {key: close[0] for key in unknown
               if (close := difflib.get_close_matches(key, known, n=1))}
    hint = ""
    if len(unknown) == 1 and guesses:
        hint = f" (did you mean {guesses[unknown[0]]!r}?)"
    elif guesses:
        hint = " (did you mean " + ", ".join(f"{guess!r} for {key!r}" for key, guess
                                            in guesses.items()) + "?)"
    return f"unknown key(s) {', '.join(unknown)}{hint}; known: {', '.join(sorted(known))}"
