"""serve.artifacts.archives: what a safe extraction accepts, refuses, and leaves behind."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from serve.artifacts.archives import (
    ExtractionLimits,
    discard_interrupted,
    find_model_archives,
    model_root,
    safe_extract,
)
from serve.errors import ArtifactError
from tests.artifacts.conftest import COMPRESSORS, Member, directory, member, tar_bytes, write_tar

LIMITS = ExtractionLimits()


def snapshot(folder: Path) -> set[str]:
    """Every path under `folder`, links not followed."""
    return {
        os.path.relpath(os.path.join(parent, name), folder)
        for parent, dirs, files in os.walk(folder)
        for name in dirs + files
    }


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_unpacks_files_folders_and_internal_links(tmp_path: Path) -> None:
    archive = write_tar(
        tmp_path / "model.tar.gz",
        [
            directory("./"),
            directory("./lib"),
            member("./lib/libfoo.so.1", b"\x7fELF library", mode=0o755),
            member("./lib/libfoo.so", kind=tarfile.SYMTYPE, linkname="libfoo.so.1"),
            member("./bin/tool", b"#!/bin/sh\n", mode=0o4777),
            member("./bin/tool-again", kind=tarfile.LNKTYPE, linkname="./bin/tool"),
            member("./up/lib", kind=tarfile.SYMTYPE, linkname="../lib"),
            member("./pyvenv.cfg", b"first copy"),
            member("./pyvenv.cfg", b"second copy"),
        ],
    )
    destination = tmp_path / "out" / "model"

    written = safe_extract(archive, destination, LIMITS)

    assert written == sum(
        map(len, [b"\x7fELF library", b"#!/bin/sh\n", b"first copy", b"second copy"])
    )
    assert (destination / "lib" / "libfoo.so").read_bytes() == b"\x7fELF library"
    assert (destination / "up" / "lib" / "libfoo.so.1").read_bytes() == b"\x7fELF library"
    tool = (destination / "bin" / "tool").stat()
    # Executable bits kept; setuid and group/other write dropped.
    assert stat.S_IMODE(tool.st_mode) == 0o755
    assert tool.st_mtime == 1_700_000_000
    assert (destination / "bin" / "tool-again").stat().st_ino == tool.st_ino
    # The last copy of a repeated file wins, as with tar itself.
    assert (destination / "pyvenv.cfg").read_bytes() == b"second copy"
    assert stat.S_IMODE(destination.stat().st_mode) == 0o755
    assert os.listdir(tmp_path / "out") == ["model"]


def test_unpacked_files_are_readable_by_tritons_user(tmp_path: Path) -> None:
    # serve (root) unpacks; Triton runs as triton-server and must read what it unpacked.
    archive = write_tar(
        tmp_path / "model.tar.gz",
        [member("./m/weights.bin", b"w", mode=0o600), member("./m/run", b"#!", mode=0o700)],
    )
    destination = tmp_path / "out"

    safe_extract(archive, destination, LIMITS)

    assert stat.S_IMODE((destination / "m" / "weights.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((destination / "m" / "run").stat().st_mode) == 0o755


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_compression_is_told_by_content_not_name(tmp_path: Path, compression: str) -> None:
    archive = write_tar(tmp_path / "model.tar.gz", [member("m/config.pbtxt", b"x")], compression)

    safe_extract(archive, tmp_path / "out", LIMITS)

    assert (tmp_path / "out" / "m" / "config.pbtxt").read_bytes() == b"x"


def test_gnu_tar_archive_of_a_folder(tmp_path: Path) -> None:
    """What users actually run: `tar -C folder -czf model.tar.gz .`."""
    source = tmp_path / "source"
    (source / "encoder" / "1").mkdir(parents=True)
    (source / "encoder" / "config.pbtxt").write_text('name: "encoder"')
    (source / "encoder" / "1" / "model.py").write_text("print('hi')")
    os.symlink("1", source / "encoder" / "latest")
    archive = tmp_path / "model.tar.gz"
    subprocess.run(["tar", "-C", str(source), "-czf", str(archive), "."], check=True)

    safe_extract(archive, tmp_path / "out", LIMITS)

    assert snapshot(tmp_path / "out") == snapshot(source)
    assert (tmp_path / "out" / "encoder" / "latest" / "model.py").read_text() == "print('hi')"


# Each hostile archive is built under `outside` (the test's tmp_path) and
# extracted into outside/sandbox/dest, so `..` lands in sandbox and `../..` in
# outside itself.
HostileBuilder = Callable[[Path], Path]


def _members(members_of: Callable[[Path], list[Member]]) -> HostileBuilder:
    return lambda outside: write_tar(outside / "input" / "hostile.tar.gz", members_of(outside))


def _truncated_gzip(outside: Path) -> Path:
    data = gzip.compress(tar_bytes([member("big.bin", os.urandom(64 * 1024))]))
    return write_bytes(outside / "input" / "cut.tar.gz", data[: len(data) // 2])


def _tar_cut_at_member_boundary(outside: Path) -> Path:
    """Two whole members and no end-of-archive marker: tarfile alone would call it complete."""
    data = tar_bytes([member("a.txt", b"a" * 1000), member("b.txt", b"b" * 10)])
    end_of_members = (1 + 2) * 512 + (1 + 1) * 512  # each: a header block, then data blocks
    return write_bytes(outside / "input" / "cut.tar.gz", gzip.compress(data[:end_of_members]))


def _tar_cut_inside_member(outside: Path) -> Path:
    data = tar_bytes([member("a.txt", b"a" * 5000)])
    return write_bytes(outside / "input" / "cut.tar", data[:2048])


def _garbage_after_end(outside: Path) -> Path:
    data = tar_bytes([member("a.txt", b"a")]) + b"trailing junk"
    return write_bytes(outside / "input" / "junk.tar", data)


HOSTILE: dict[str, tuple[HostileBuilder, ExtractionLimits, str]] = {
    "traversal": (_members(lambda o: [member("../escaped.txt", b"x")]), LIMITS, "'..'"),
    "nested traversal": (
        _members(lambda o: [member("m/../../escaped.txt", b"x")]),
        LIMITS,
        "'m/../../escaped.txt' has '..'",
    ),
    "absolute path": (
        _members(lambda o: [member(str(o / "escaped.txt"), b"x")]),
        LIMITS,
        "absolute path",
    ),
    "absolute symlink": (
        _members(lambda o: [member("link", kind=tarfile.SYMTYPE, linkname=str(o))]),
        LIMITS,
        "'link' is a symbolic link",
    ),
    "escaping symlink": (
        _members(lambda o: [member("m/link", kind=tarfile.SYMTYPE, linkname="../../escaped")]),
        LIMITS,
        "points outside the archive",
    ),
    "write through a symlink": (
        _members(
            lambda o: [
                member("link", kind=tarfile.SYMTYPE, linkname="m"),
                member("link/escaped.txt", b"x"),
            ]
        ),
        LIMITS,
        "lies under 'link', which is a symbolic link",
    ),
    "symlink through an inner symlink": (
        _members(
            lambda o: [
                member("a/b/up", kind=tarfile.SYMTYPE, linkname="../.."),
                member("out", kind=tarfile.SYMTYPE, linkname="a/b/up/.."),
            ]
        ),
        LIMITS,
        "'out' is a symbolic link to 'a/b/up/..', which points outside",
    ),
    "symlink changed by a later symlink": (
        _members(
            lambda o: [
                member("e", kind=tarfile.SYMTYPE, linkname="x/.."),
                member("x", kind=tarfile.SYMTYPE, linkname="."),
            ]
        ),
        LIMITS,
        "points outside the archive",
    ),
    "symlink loop": (
        _members(
            lambda o: [
                member("a", kind=tarfile.SYMTYPE, linkname="b"),
                member("b", kind=tarfile.SYMTYPE, linkname="a"),
            ]
        ),
        LIMITS,
        "loop of symbolic links",
    ),
    "escaping hard link": (
        _members(lambda o: [member("hard", kind=tarfile.LNKTYPE, linkname="../escaped.txt")]),
        LIMITS,
        "'hard' has '..' in its link target",
    ),
    "absolute hard link": (
        _members(lambda o: [member("hard", kind=tarfile.LNKTYPE, linkname="/etc/passwd")]),
        LIMITS,
        "absolute link target",
    ),
    "hard link to nothing in the archive": (
        _members(lambda o: [member("hard", kind=tarfile.LNKTYPE, linkname="elsewhere.txt")]),
        LIMITS,
        "not a file stored earlier in the archive",
    ),
    "character device": (
        _members(lambda o: [member("dev/null", kind=tarfile.CHRTYPE)]),
        LIMITS,
        "'dev/null' is a character device",
    ),
    "block device": (
        _members(lambda o: [member("dev/sda", kind=tarfile.BLKTYPE)]),
        LIMITS,
        "'dev/sda' is a block device",
    ),
    "fifo": (
        _members(lambda o: [member("m/pipe", kind=tarfile.FIFOTYPE)]),
        LIMITS,
        "'m/pipe' is a FIFO",
    ),
    "file where a folder is": (
        _members(lambda o: [member("m", b"x"), member("m/config.pbtxt", b"x")]),
        LIMITS,
        "lies under 'm', which is a file",
    ),
    "byte bomb": (
        _members(lambda o: [member("a.bin", b"\0" * 600_000), member("b.bin", b"\0" * 600_000)]),
        ExtractionLimits(max_total_bytes=1_000_000),
        "more than 1000000 bytes unpacked (at member 'b.bin')",
    ),
    "member bomb": (
        _members(lambda o: [member(f"f{i}.txt", b"x") for i in range(50)]),
        ExtractionLimits(max_members=20),
        "more than 20 members",
    ),
    "truncated gzip": (_truncated_gzip, LIMITS, "truncated or corrupt"),
    "tar cut at a member boundary": (_tar_cut_at_member_boundary, LIMITS, "truncated"),
    "tar cut inside a member": (_tar_cut_inside_member, LIMITS, "not a readable tar archive"),
    "data after the end": (_garbage_after_end, LIMITS, "data after its end"),
    "not a tar": (
        lambda o: write_bytes(o / "input" / "model.tar.gz", b"name: 'not an archive'\n" * 40),
        LIMITS,
        "not a readable tar archive",
    ),
    "gzip of something else": (
        lambda o: write_bytes(o / "input" / "model.tar.gz", gzip.compress(b"plain text" * 100)),
        LIMITS,
        "not a readable tar archive",
    ),
    "empty file": (
        lambda o: write_bytes(o / "input" / "model.tar.gz", b""),
        LIMITS,
        "not a readable tar archive",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archive_is_refused_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    build, limits, expected = HOSTILE[case]
    # A file that must not be touched by a link pointing at it.
    (tmp_path / "escaped").write_text("untouched")
    archive = build(tmp_path)
    before = snapshot(tmp_path)
    destination = tmp_path / "sandbox" / "dest"

    with pytest.raises(ArtifactError) as refused:
        safe_extract(archive, destination, limits)

    message = str(refused.value)
    assert str(archive) in message
    assert expected in message
    assert refused.value.status == 400
    # Nothing written anywhere, not even a partial destination.
    assert snapshot(tmp_path) == before | {"sandbox"}
    assert (tmp_path / "escaped").read_text() == "untouched"


def test_message_says_what_to_do(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "m.tar.gz", [member("../x", b"x")])
    with pytest.raises(ArtifactError, match=r"re-create the archive .*tar -C <folder> -czf"):
        safe_extract(archive, tmp_path / "out", LIMITS)


def test_destination_must_not_exist(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "m.tar.gz", [member("a.txt", b"new")])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("old")

    with pytest.raises(FileExistsError):
        safe_extract(archive, tmp_path / "out", LIMITS)

    assert (tmp_path / "out" / "a.txt").read_text() == "old"


def test_discard_interrupted_removes_only_that_destinations_leftovers(tmp_path: Path) -> None:
    leftover = tmp_path / ".env.partial-k2j4"
    (leftover / "bin").mkdir(parents=True)
    other = tmp_path / ".other.partial-a1"
    other.mkdir()

    discard_interrupted(tmp_path / "env")

    assert not leftover.exists()
    assert other.exists()


def test_find_model_archives(tmp_path: Path) -> None:
    for name in ("model.tar.gz", "b.TGZ", "c.tar", "d.zip", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.tar").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.tar.gz").write_bytes(b"")

    assert [p.name for p in find_model_archives(tmp_path)] == ["b.TGZ", "c.tar", "model.tar.gz"]


def _repository(folder: Path, *models: str) -> Path:
    for name in models:
        (folder / name / "1").mkdir(parents=True)
        (folder / name / "config.pbtxt").write_text(f'name: "{name}"')
    return folder


def test_model_root_with_models_at_the_archive_root(tmp_path: Path) -> None:
    extracted = _repository(tmp_path, "tokenizer", "encoder")
    assert model_root(extracted) == extracted


def test_model_root_looks_through_one_wrapper_folder(tmp_path: Path) -> None:
    _repository(tmp_path / "model_repository", "tokenizer", "encoder")
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / ".DS_Store").write_bytes(b"")
    assert model_root(tmp_path) == tmp_path / "model_repository"


def test_model_root_wrapper_of_models_without_config(tmp_path: Path) -> None:
    (tmp_path / "models" / "onnx_model" / "1").mkdir(parents=True)
    assert model_root(tmp_path) == tmp_path / "models"


def test_model_root_keeps_a_single_model_folder(tmp_path: Path) -> None:
    """One model at the root is not a wrapper, even though it has one folder."""
    _repository(tmp_path, "encoder")
    assert model_root(tmp_path) == tmp_path


def test_model_root_keeps_a_model_archived_without_its_folder(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text('name: "m"')
    (tmp_path / "1").mkdir()
    assert model_root(tmp_path) == tmp_path


@pytest.mark.parametrize("wrapped", [False, True], ids=["models at root", "wrapper folder"])
def test_both_layouts_from_real_tar(tmp_path: Path, wrapped: bool) -> None:
    source = tmp_path / "source"
    repository = _repository(source / "repo" if wrapped else source, "tokenizer", "encoder")
    archive = tmp_path / "model.tar.gz"
    subprocess.run(["tar", "-C", str(source), "-czf", str(archive), "."], check=True)

    safe_extract(archive, tmp_path / "out", LIMITS)
    root = model_root(tmp_path / "out")

    assert root == tmp_path / "out" / repository.relative_to(source)
    assert sorted(p.name for p in root.iterdir()) == ["encoder", "tokenizer"]
