"""Hostile generated archives for the archive checker, under a memory and time budget.

Members named to escape (`..`, absolute, through links), links out of the
tree or into loops, devices, repeated names that change kind, sizes the data
does not carry, bombs that inflate past the limit, and bytes flipped or cut
anywhere: `safe_extract` unpacks what is safe, or refuses with an
ArtifactError, and either way nothing lands outside the destination and
nothing is left behind on refusal (tests/artifacts/test_archives.py has the
cases someone thought of).
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serve.artifacts.archives import XZ_DECODER_MEMORY, XZ_MAGIC, ExtractionLimits, safe_extract
from serve.errors import ArtifactError
from tests.artifacts.conftest import COMPRESSORS, member, tar_bytes
from tests.budget import FUZZ, MEBIBYTE, address_space, memory_budget

LIMITS = ExtractionLimits(max_total_bytes=64 * 1024, max_members=24)

PARTS = st.sampled_from(["a", "b", "..", ".", "", "lib", "x" * 120, "é", "a b", "-", "\\"])
NAMES = st.one_of(
    st.lists(PARTS, min_size=1, max_size=4).map("/".join),
    st.lists(PARTS, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["./", "../x", "a/../../x", "/etc/passwd", "a//b", "a/./b/", "." * 300]),
    st.sampled_from(["a/" * 1500, "b" * 256, "c" * 255, "x/" + "y" * 4000, "z" * 5000]),
)
KINDS = st.sampled_from(
    [
        tarfile.REGTYPE,
        tarfile.DIRTYPE,
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.FIFOTYPE,
        tarfile.CHRTYPE,
        tarfile.CONTTYPE,
    ]
)
MEMBERS = st.builds(
    lambda name, kind, linkname, data, mode: member(
        name, data, kind=kind, linkname=linkname, mode=mode
    ),
    NAMES,
    KINDS,
    NAMES | st.just(""),
    st.binary(max_size=64) | st.just(b"\0" * 40_000),
    st.sampled_from([0o644, 0o755, 0o4777, 0o000, 0o7777]),
)


def mutated(data: bytes, edits: list[tuple[float, int]], cut: float | None) -> bytes:
    """`data` with bytes overwritten at fractions of its length, then perhaps cut short."""
    changed = bytearray(data)
    for at, value in edits:
        if changed:
            changed[int(at * (len(changed) - 1))] = value
    if cut is not None:
        changed = changed[: int(cut * len(changed))]
    return bytes(changed)


def bomb(size: int) -> bytes:
    """A gzip'd tar of one member of `size` zero bytes: a few KB that inflate to `size`."""
    return gzip.compress(tar_bytes([member("zeros", b"\0" * size)]))


ARCHIVES = st.one_of(
    st.builds(
        lambda members, compression, edits, cut: mutated(
            COMPRESSORS[compression](tar_bytes(members)), edits, cut
        ),
        st.lists(MEMBERS, max_size=8),
        st.sampled_from(sorted(COMPRESSORS)),
        st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3),
        st.none() | st.floats(0, 1),
    ),
    st.sampled_from([4 * MEBIBYTE, 40 * MEBIBYTE]).map(bomb),
    st.binary(max_size=600),
)


@pytest.fixture(autouse=True, scope="module")
def bounded_address_space() -> Iterator[None]:
    with address_space():
        yield


def every_path(folder: Path) -> list[Path]:
    return [Path(parent) / name for parent, dirs, files in os.walk(folder) for name in dirs + files]


@FUZZ
@given(archive=ARCHIVES)
def test_an_archive_unpacks_inside_its_destination_or_is_refused_leaving_nothing(
    archive: bytes,
) -> None:
    root = Path(tempfile.mkdtemp(prefix="fuzz-archive-"))
    try:
        (root / "model.tar.gz").write_bytes(archive)
        parent = root / "out"
        destination = parent / "model"
        # An xz decoder takes the dictionary its header names, up to serve's bound.
        decoder = XZ_DECODER_MEMORY if archive.startswith(XZ_MAGIC) else 0
        with memory_budget(16 * MEBIBYTE + decoder):
            try:
                written = safe_extract(root / "model.tar.gz", destination, LIMITS)
            except ArtifactError as exc:
                assert "model.tar.gz" in exc.message
                written = None
        if written is None:
            assert not parent.exists() or not any(parent.iterdir())
            return
        assert 0 <= written <= LIMITS.max_total_bytes
        assert os.listdir(parent) == ["model"]
        inside = destination.resolve()
        for path in every_path(destination):
            mode = path.lstat().st_mode
            # os.walk follows no link: only a link can lead outside.
            assert stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode), path
            assert not mode & 0o6000, path
            if stat.S_ISLNK(mode):
                assert path.resolve().is_relative_to(inside), path
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_an_xz_header_asking_for_a_large_dictionary_is_refused_before_it_is_allocated(
    tmp_path: Path,
) -> None:
    data = bytearray(lzma.compress(tar_bytes([member("config.pbtxt", b"x")])))
    # The block header's LZMA2 properties byte names the dictionary: 32 is 256 MiB.
    header = 12
    size = (data[header] + 1) * 4
    assert data[header + 2] == 0x21  # the LZMA2 filter
    data[header + 4] = 32
    crc = zlib.crc32(bytes(data[header : header + size - 4]))
    data[header + size - 4 : header + size] = crc.to_bytes(4, "little")
    (tmp_path / "model.tar.xz").write_bytes(bytes(data))
    with memory_budget(16 * MEBIBYTE + XZ_DECODER_MEMORY), pytest.raises(ArtifactError) as refused:
        safe_extract(tmp_path / "model.tar.xz", tmp_path / "out", LIMITS)
    assert "model.tar.xz" in refused.value.message
    assert "limit" in refused.value.message
