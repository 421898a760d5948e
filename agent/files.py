"""Reading a file a person named (on the command line or in the configuration), with the
one-line message each failure gets: ``path: no such file``, ``path: is a directory, not a
file``, ``path: cannot read: Permission denied``. Decides the wording; nothing else."""

from __future__ import annotations

import os


class FileProblem(ValueError):
    """A named file that cannot be read; ``str()`` is the one-line message."""


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileProblem(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FileProblem(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise FileProblem(f"{path}: cannot read: {e.strerror or e}") from None


def read_text(path: str | os.PathLike[str]) -> str:
    data = read_bytes(path)
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise FileProblem(f"{path}: not UTF-8 text (byte {e.start})") from None
