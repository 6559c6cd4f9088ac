"""Unpacking users' tar archives without trusting them.

Model archives and environment archives come from users, so every member is
checked before anything touches the disk: nothing lands outside the
destination, only regular files, directories and links that stay inside the
archive are accepted, and size and member-count limits stop archive bombs by
counting what is actually written. Extraction goes to a hidden sibling folder
that is renamed into place only when every member was accepted, so a refused,
corrupt or interrupted archive never leaves a partial tree behind.

`tarfile` is driven in streaming mode and the decompression is done here, not
by `tarfile`: that way every uncompressed byte is counted (headers included),
and a tar that was cut short at a member boundary, which `tarfile` would
silently take for a complete one, is reported as truncated.
"""

from __future__ import annotations

import _compression
import bz2
import contextlib
import gzip
import io
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from serve.artifacts.paths import inside
from serve.errors import ArtifactError, is_out_of_space, out_of_space
from serve.settings import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS, Settings
from serve.triton.model_config import CONFIG_FILE

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")

_CHUNK = 1 << 20
# What one member may add to the uncompressed stream besides its data: its
# header, a pax extended header with long names, and the padding to 512 bytes.
_HEADER_ALLOWANCE = 4096
# The end-of-archive marker and the padding of the last record.
_TRAILER_ALLOWANCE = 64 * 1024
# The longest file name and path Linux takes (NAME_MAX; PATH_MAX less room for the
# destination's own path).
_MAX_NAME_BYTES = 255
_MAX_PATH_BYTES = 3072
# Linux gives up after 40 symbolic links in one lookup; so do we.
_MAX_LINK_HOPS = 40
# What an xz decoder may allocate: its header names the dictionary it needs (up to
# 1.5 GiB, allocated before any data); `xz -9` needs 65 MiB.
XZ_DECODER_MEMORY = 96 * 1024 * 1024
XZ_MAGIC = b"\xfd7zXZ\x00"


def _xz_open(raw: BinaryIO, mode: str) -> BinaryIO:
    """lzma.open with the decoder's memory bounded (lzma.open takes no limit)."""
    reader = _compression.DecompressReader(
        raw, lzma.LZMADecompressor, trailing_error=lzma.LZMAError, memlimit=XZ_DECODER_MEMORY
    )
    return cast(BinaryIO, io.BufferedReader(reader))


_COMPRESSED_FORMATS = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (XZ_MAGIC, _xz_open),
)
_LINK_FIX = (
    "make links point inside the archive, or archive the files they point to (tar --dereference)"
)
_REBUILD = "re-create the archive from the folder, e.g. `tar -C <folder> -czf model.tar.gz .`"


@dataclass(frozen=True)
class ExtractionLimits:
    """How much one archive may unpack to; generous, since a model can be tens of GB."""

    max_total_bytes: int = MAX_ARCHIVE_BYTES
    max_members: int = MAX_ARCHIVE_MEMBERS

    @classmethod
    def of(cls, settings: Settings) -> ExtractionLimits:
        return cls(settings.max_archive_bytes, settings.max_archive_members)


class _Refused(Exception):
    """A member or the archive broke a rule; turned into an `ArtifactError` naming the archive."""


class _Stream:
    """The archive's uncompressed bytes, counted as `tarfile` reads them.

    Counting here bounds everything `tarfile` consumes (pax headers and skipped
    data too) and remembers where the last non-zero byte was, which tells a
    complete archive, whose end-of-archive marker is zeros, from a cut one.
    """

    def __init__(self, source: BinaryIO, budget: int) -> None:
        self._source = source
        self._budget = budget
        self.position = 0
        self.data_end = 0

    def read(self, size: int) -> bytes:
        try:
            data = self._source.read(size)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise _Refused(f"truncated or corrupt ({exc}); upload it again or {_REBUILD}") from exc
        start = self.position
        self.position += len(data)
        if self.position > self._budget:
            raise _Refused(
                f"more than {self._budget} bytes of tar data, over the extraction "
                "limit; raise the limit if the archive is genuine"
            )
        content = data.rstrip(b"\0")
        if content:
            self.data_end = start + len(content)
        return data


class _Extraction:
    """The checks and bookkeeping of one archive being unpacked into `root`.

    Symbolic links are created only after every other member is on disk, and
    no member may lie under a link, so while files are written the tree holds
    no links at all and nothing can be redirected through one. Links are then
    checked against the complete set of the archive's links, which closes the
    tricks where a later link changes what an earlier one resolves to.
    """

    def __init__(self, root: Path, limits: ExtractionLimits) -> None:
        self.root = root
        self.limits = limits
        self.members = 0
        self.bytes_written = 0
        # Normalised member path -> "dir", "file" (hard links too) or "symlink".
        self.kinds: dict[str, str] = {}
        # Every folder some member lies in, whether or not the archive lists it.
        self.parents: set[str] = set()
        self.symlinks: dict[str, str] = {}

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise _Refused(
                f"more than {self.limits.max_members} members, over the extraction limit; "
                "raise the limit if the archive is genuine"
            )
        name = _relative_path(member.name, member.name, "path")
        if name is None:
            if not member.isdir():
                raise _Refused(f"member {member.name!r} is not a directory but names the root")
            return
        repeated = self._claim(name, member)
        if member.isdir():
            self._path(name).mkdir(parents=True, exist_ok=True)
        elif member.issym():
            if member.linkname.startswith("/") or not member.linkname:
                raise _link_refused(name, member, "which is absolute or empty")
            if len(os.fsencode(member.linkname)) > _MAX_PATH_BYTES:
                raise _link_refused(name, member, f"longer than {_MAX_PATH_BYTES} bytes")
            self.symlinks[name] = member.linkname
        else:
            if repeated:
                # As with tar itself, the last copy of a file wins (venv-pack
                # writes pyvenv.cfg twice).
                self._path(name).unlink()
            if member.isreg():
                self._write_file(tar, member, name)
            else:
                self._hard_link(member, name)

    def finish(self) -> None:
        """Create the symbolic links once the tree is complete and every link is known."""
        for name, target in self.symlinks.items():
            problem = _resolve_inside(name, self.symlinks)
            if problem:
                raise _Refused(f"member {name!r} is a symbolic link to {target!r}, {problem}")
        for name, target in self.symlinks.items():
            path = self._path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, path)

    def _claim(self, name: str, member: tarfile.TarInfo) -> bool:
        """Record `name`; True if it was seen before as the same kind of entry.

        Refuses the types we do not unpack, paths under a link or a file, and
        a path that changes kind (a file where a folder was, and so on).
        """
        if member.isdir():
            kind = "dir"
        elif member.isreg() or member.islnk():
            kind = "file"
        elif member.issym():
            kind = "symlink"
        else:
            raise _Refused(
                f"member {name!r} is a {_describe_type(member)}; only regular files, folders "
                "and links inside the archive are unpacked, so remove it from the archive"
            )
        ancestors = _ancestors(name)
        for ancestor in ancestors:
            if self.kinds.get(ancestor, "dir") != "dir":
                raise _Refused(
                    f"member {name!r} lies under {ancestor!r}, which is a "
                    f"{'symbolic link' if self.kinds[ancestor] == 'symlink' else 'file'} "
                    f"in the archive; {_REBUILD}"
                )
        previous = self.kinds.get(name)
        if previous not in (None, kind) or (kind != "dir" and name in self.parents):
            raise _Refused(
                f"member {name!r} is a {kind} but the archive also has it as a "
                f"{previous or 'folder'}; {_REBUILD}"
            )
        self.kinds[name] = kind
        self.parents.update(ancestors)
        return previous is not None

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        remaining = self.limits.max_total_bytes - self.bytes_written
        if member.size > remaining:
            raise self._too_large(name)
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None  # a regular member always has data
        # Keep the permission bits that matter (executables stay executable, by all),
        # drop setuid/setgid/sticky and group/other write, keep the owner able
        # to rewrite the file (conda-unpack rewrites prefixes in place) and
        # everyone able to read it (Triton may run as another user than serve).
        mode = (member.mode & 0o755) | 0o644 | (0o111 if member.mode & 0o100 else 0)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags, mode), "wb") as out:
            while chunk := source.read(_CHUNK):
                self.bytes_written += len(chunk)
                if self.bytes_written > self.limits.max_total_bytes:
                    raise self._too_large(name)
                out.write(chunk)
            os.fchmod(out.fileno(), mode)
        # Python checks .pyc files against their source's mtime; a nonsense
        # mtime in a header is not worth refusing the archive for.
        with contextlib.suppress(OverflowError, ValueError):
            os.utime(path, (member.mtime, member.mtime))

    def _hard_link(self, member: tarfile.TarInfo, name: str) -> None:
        target = _relative_path(member.linkname, name, "link target")
        if target is None or target == name or self.kinds.get(target) != "file":
            raise _link_refused(name, member, "which is not a file stored earlier in the archive")
        os.link(self._path(target), self._path(name), follow_symlinks=False)

    def _path(self, name: str) -> Path:
        """Where member `name` goes, proven inside the root (`_relative_path` checked it)."""
        try:
            return inside(self.root, name, what="member")
        except ArtifactError as exc:
            raise _Refused(f"{exc.message}; {_REBUILD}") from None

    def _too_large(self, name: str) -> _Refused:
        return _Refused(
            f"more than {self.limits.max_total_bytes} bytes unpacked (at member {name!r}), "
            "over the extraction limit; raise the limit if the archive is genuine"
        )


def safe_extract(archive: Path, destination: Path, limits: ExtractionLimits) -> int:
    """Unpack `archive` (tar, optionally gzip/bzip2/xz) into `destination`; return bytes written.

    `destination` must not exist; its parent is created. On success it appears
    complete in one rename; on any failure nothing is left behind and a refused
    or unreadable archive raises `ArtifactError` naming the archive, the member
    and what to do. A file system that fills up raises `InsufficientStorage`
    (507) naming the archive, the destination and the sizes.
    """
    if destination.exists() or destination.is_symlink():
        raise FileExistsError(f"extraction destination {destination} already exists")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(destination), dir=destination.parent))
    started = time.monotonic()
    extraction = _Extraction(staging, limits)
    try:
        _extract(archive, extraction)
        # mkdtemp made it private; the result is an ordinary folder.
        staging.chmod(0o755)
        os.rename(staging, destination)
    except _Refused as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArtifactError(f"archive {archive}: {exc}") from exc.__cause__
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not is_out_of_space(exc):
            raise
        raise out_of_space(
            destination,
            f"unpacking {archive} ({archive.stat().st_size} bytes) into {destination}, "
            f"which needs more than the {extraction.bytes_written} bytes written when it filled up",
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "Unpacked %s into %s: %d members, %d bytes in %.2f s",
        archive,
        destination,
        extraction.members,
        extraction.bytes_written,
        time.monotonic() - started,
    )
    return extraction.bytes_written


def discard_interrupted(destination: Path) -> None:
    """Remove what an extraction into `destination` left when its process died.

    Only call this while holding whatever lock serialises extractions into
    `destination`: a running extraction's staging folder looks the same.
    """
    for leftover in destination.parent.glob(f"{_staging_prefix(destination)}*"):
        log.warning("Removing %s, left by an interrupted extraction", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def find_model_archives(directory: Path) -> list[Path]:
    """The archives at the top of `directory` that preparation unpacks, in name order."""
    return sorted(
        entry
        for entry in directory.iterdir()
        if entry.is_file() and entry.name.lower().endswith(ARCHIVE_SUFFIXES)
    )


# A model.tar.gz unpacked on macOS or from a notebook drags these along.
JUNK_NAMES = {"__MACOSX", "__pycache__", "lost+found"}


def is_junk(entry: Path) -> bool:
    """Hidden entries and the folders tools leave beside models: never a model."""
    return entry.name.startswith(".") or entry.name in JUNK_NAMES


def model_root(extracted: Path) -> Path:
    """The folder inside an unpacked archive that holds the model folders.

    Users archive either the model folders themselves or the repository folder
    around them (`tar -czf model.tar.gz models/`). A single top-level folder
    that is not itself a model but holds model folders is such a wrapper and is
    looked through; anything else is taken as is. Junk entries (`is_junk`)
    do not count as a second top-level entry.
    """
    if (extracted / CONFIG_FILE).is_file():
        return extracted
    entries = [entry for entry in extracted.iterdir() if not is_junk(entry)]
    if len(entries) == 1 and entries[0].is_dir() and not _is_model_folder(entries[0]):
        wrapper = entries[0]
        if any(_is_model_folder(child) for child in wrapper.iterdir()):
            return wrapper
    return extracted


def _is_model_folder(path: Path) -> bool:
    """A model has a config.pbtxt, or at least a numeric version folder (auto-completed config)."""
    if not path.is_dir():
        return False
    if (path / CONFIG_FILE).is_file():
        return True
    return any(child.is_dir() and child.name.isdigit() for child in path.iterdir())


def _extract(archive: Path, extraction: _Extraction) -> None:
    limits = extraction.limits
    budget = limits.max_total_bytes + limits.max_members * _HEADER_ALLOWANCE + _TRAILER_ALLOWANCE
    with archive.open("rb") as raw, _decompressed(raw) as source:
        stream = _Stream(source, budget)
        try:
            # Stream mode only reads; tarfile's type wants a whole file object.
            with tarfile.open(fileobj=cast(BinaryIO, stream), mode="r|") as tar:
                for member in tar:
                    extraction.add(tar, member)
                end = tar.offset
        except tarfile.TarError as exc:
            raise _Refused(
                f"not a readable tar archive, or truncated ({exc}); upload it again or {_REBUILD}"
            ) from exc
        while stream.read(_CHUNK):
            pass
        if stream.position - end < tarfile.BLOCKSIZE or stream.data_end > end:
            raise _Refused(
                "truncated, or data after its end (no end-of-archive marker where the last "
                f"member ends); upload it again or {_REBUILD}"
            )
    extraction.finish()


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """Decompress by content, not by file name: a .tar.gz may well be an uncompressed tar."""
    magic = raw.read(6)
    raw.seek(0)
    for prefix, opener in _COMPRESSED_FORMATS:
        if magic.startswith(prefix):
            return cast(BinaryIO, opener(raw, "rb"))
    return raw


def _resolve_inside(name: str, symlinks: dict[str, str]) -> str | None:
    """Follow the link `name` through the archive's own links, as the kernel would.

    Returns why the link is unacceptable (it leaves the root, or loops), or
    None. The walk uses the archive's links rather than the disk, so it sees
    the final tree whatever order the members came in. Absolute targets were
    refused on arrival, so every target here is relative.
    """
    parts = name.split("/")[:-1]
    pending = deque(symlinks[name].split("/"))
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return f"which points outside the archive; {_LINK_FIX}"
            parts.pop()
            continue
        parts.append(part)
        target = symlinks.get("/".join(parts))
        if target is None:
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS:
            return f"which is part of a loop of symbolic links; {_LINK_FIX}"
        parts.pop()
        pending.extendleft(reversed(target.split("/")))
    return None


def _link_refused(name: str, member: tarfile.TarInfo, problem: str) -> _Refused:
    kind = "symbolic" if member.issym() else "hard"
    return _Refused(
        f"member {name!r} is a {kind} link to {member.linkname!r}, {problem}; {_LINK_FIX}"
    )


def _relative_path(raw: str, member: str, what: str) -> str | None:
    """`raw` as a clean relative path, None for the archive's root; refuses escapes."""
    if raw.startswith("/"):
        raise _Refused(f"member {member!r} has an absolute {what}; {_REBUILD}")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _Refused(f"member {member!r} has '..' in its {what}; {_REBUILD}")
    longest = max((len(os.fsencode(part)) for part in parts), default=0)
    if longest > _MAX_NAME_BYTES or len(os.fsencode(raw)) > _MAX_PATH_BYTES:
        raise _Refused(
            f"member {member[:80]!r}... has a {what} longer than Linux takes ({_MAX_NAME_BYTES} "
            f"bytes a name, {_MAX_PATH_BYTES} in all); shorten it"
        )
    return "/".join(parts) or None


def _ancestors(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:depth]) for depth in range(1, len(parts))]


def _describe_type(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    return f"member of unsupported tar type {member.type!r}"


def _staging_prefix(destination: Path) -> str:
    return f".{destination.name}.partial-"
