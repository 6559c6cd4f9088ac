"""Names taken from artifacts, and the paths built from them: one rule for each.

A model's name comes from a caller (`model_name` of a multi-model load) or
from content (a `config.pbtxt`'s `name`, an ensemble's steps, a folder or
archive name), and serve builds folders of the prepared repository from it,
as root. A name from content is checked exactly like one from a caller
(`check_name`), and every path built from one is proven inside its root
(`inside`) before any file is created, linked or removed there.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from pathlib import Path

from serve.errors import ArtifactError

# The longest file name Linux file systems take, in bytes.
MAX_NAME_BYTES = 255


def name_problem(name: object) -> str | None:
    """Why `name` cannot name a model (a folder of the repository); None when it can.

    Refused: anything but a non-empty string; '/' (a path, not a name); '.' and
    '..'; control characters (NUL among them, and line breaks, which would forge
    log lines) and lone surrogates (UTF-8 cannot encode them); over 255 bytes.
    """
    if not isinstance(name, str):
        return f"{name!r} is not a string"
    if not name:
        return "the name is empty"
    if name in (".", ".."):
        return f"{name!r} names a folder, not a model"
    if "/" in name:
        return f"{name!r} holds '/', which makes it a path"
    character = control_character(name)
    if character is not None:
        return f"{name!r} holds {character!r}, a control character or half of a surrogate pair"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"{name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes"
    return None


def control_character(text: str) -> str | None:
    """The first control character (NUL, line breaks, ...) or lone surrogate in `text`."""
    for character in text:
        if unicodedata.category(character) in ("Cc", "Cs"):
            return character
    return None


def check_name(name: object, where: str, fix: str) -> str:
    """`name`, or ArtifactError saying `where` it came from, what is wrong and `fix`."""
    problem = name_problem(name)
    if problem is not None:
        raise ArtifactError(f"{where}: {problem}; {fix}")
    assert isinstance(name, str)
    return name


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path`, links resolved as the kernel would, lies in `root` (or is it)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def inside(root: Path, *parts: str | Path, what: str = "a path") -> Path:
    """`root` joined with `parts`, proven to stay inside `root`; ArtifactError if not.

    Both as written ('..' components, absolute parts) and as the kernel would
    resolve it (links in the part that exists): a link planted earlier cannot
    lead a later write out either.
    """
    shown = "/".join(str(part) for part in parts)
    try:
        # A lone surrogate (JSON's "\ud800") is text no file system takes.
        os.fsencode(shown)
    except UnicodeEncodeError:
        raise ArtifactError(
            f"{what} {shown!r} is not a file name (it cannot be encoded as "
            f"{sys.getfilesystemencoding()}); give names of plain text"
        ) from None
    path = root.joinpath(*parts)
    written = Path(os.path.normpath(path))
    if not (written.is_relative_to(os.path.normpath(root)) and is_inside(path, root)):
        raise ArtifactError(
            f"{what} {shown!r} leads outside {root}; serve writes only inside it, so "
            "give names without '/' or '..'"
        )
    return path
