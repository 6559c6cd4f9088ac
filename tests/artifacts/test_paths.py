"""serve.artifacts.paths against generated hostile names and paths (hypothesis).

The rule for names and the proof that a path stays inside its root are what
stand between an upload's content and the host's file system: they are fed
arbitrary text (slashes, dots, control characters, surrogates, long names),
a root holding links that lead out of it, and archives whose config names a
generated name.
"""

from __future__ import annotations

import io
import os
import tarfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.artifacts.archives import ExtractionLimits
from serve.artifacts.paths import MAX_NAME_BYTES, check_name, inside, is_inside, name_problem
from serve.artifacts.repository import unpack_model_archive
from serve.errors import ArtifactError

# Text leaning towards what breaks paths, with anything else mixed in.
PATHY = st.lists(
    st.one_of(
        st.sampled_from(["/", ".", "..", "~", "\\", "\0", "\n", " ", "a", "out", "loop"]),
        st.characters(),
    ),
    max_size=16,
).map("".join)
WAYS_OUT = st.sampled_from(["..", "/", "/etc", "out", "loop/x"])
PARTS = st.lists(st.one_of(PATHY, WAYS_OUT), max_size=5)
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def acceptable(name: str) -> bool:
    """The rule, restated: a plain, printable, short name of one path component."""
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and not any(unicodedata.category(c) in ("Cc", "Cs") for c in name)
        and len(name.encode()) <= MAX_NAME_BYTES
    )


@pytest.fixture
def rooted(tmp_path: Path) -> tuple[Path, Path]:
    """A root holding a link out of it (`out`) and a link loop (`loop`), and the outside."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "loop").symlink_to("loop")
    (root / "inner").mkdir()
    return root, outside


@FUZZ
@given(name=st.one_of(PATHY, st.text(min_size=250, max_size=300)))
def test_names_follow_the_rule(name: str) -> None:
    assert (name_problem(name) is None) == acceptable(name), name
    if acceptable(name):
        assert check_name(name, "where", "fix") == name
    else:
        with pytest.raises(ArtifactError, match=r"(?s)^where: .*; fix$"):
            check_name(name, "where", "fix")


@FUZZ
@given(value=st.one_of(st.none(), st.integers(), st.lists(st.text()), st.binary()))
def test_only_strings_are_names(value: object) -> None:
    with pytest.raises(ArtifactError, match="is not a string"):
        check_name(value, "where", "fix")


@FUZZ
@given(name=PATHY)
def test_an_accepted_name_is_one_folder_of_its_root(rooted: tuple[Path, Path], name: str) -> None:
    root, _outside = rooted
    if name_problem(name) is not None or name in ("out", "loop"):
        return
    path = inside(root, name)
    assert path.parent == root and path.name == name


def test_a_name_no_file_system_takes_is_refused_not_a_crash(
    rooted: tuple[Path, Path],
) -> None:
    root, _outside = rooted
    with pytest.raises(ArtifactError, match="is not a file name"):
        inside(root, "\ud800")


@FUZZ
@given(parts=PARTS)
def test_inside_never_returns_a_path_out_of_its_root(
    rooted: tuple[Path, Path], parts: list[str]
) -> None:
    root, outside = rooted
    try:
        path = inside(root, *parts)
    except ArtifactError as exc:
        assert "leads outside" in exc.message or "is not a file name" in exc.message
        return
    except ValueError:  # a NUL: no file operation could take it either
        assert any("\0" in part for part in parts)
        return
    assert is_inside(path, root)
    assert not Path(os.path.realpath(path)).is_relative_to(outside)
    assert os.path.normpath(path).startswith(str(root))


def test_inside_refuses_the_ways_out(rooted: tuple[Path, Path]) -> None:
    root, _outside = rooted
    for parts in (("..",), ("a/../..",), ("/etc",), ("out",), ("out", "x"), ("inner", "../../x")):
        with pytest.raises(ArtifactError, match="leads outside"):
            inside(root, *parts)
    assert inside(root, "inner", "x") == root / "inner" / "x"
    assert inside(root, "a~..") == root / "a~.."


def one_model_archive(config_name: str) -> bytes:
    """A tar.gz of one model's own files whose config.pbtxt names it `config_name`."""
    escaped = config_name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    files = {
        "config.pbtxt": f'name: "{escaped}"\nbackend: "python"\n'.encode(),
        "1/model.py": b"",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(config_name=PATHY.filter(bool))
def test_an_archive_names_its_model_only_by_an_accepted_name(
    tmp_path_factory: pytest.TempPathFactory, config_name: str
) -> None:
    scratch = tmp_path_factory.mktemp("archive")
    archive = scratch / "model.tar.gz"
    archive.write_bytes(one_model_archive(config_name))
    destination = scratch / "deep" / "er" / "unpacked"
    try:
        models = unpack_model_archive(archive, destination, ExtractionLimits())
    except ArtifactError as exc:
        # Refused by name (naming the archive), or a config that does not parse.
        assert "config.pbtxt" in exc.message, exc.message
        return
    ((name, folder),) = models.items()
    assert name_problem(name) is None
    assert folder == destination
    # Nothing was written beside the archive but the unpacked folder.
    assert sorted(p.name for p in scratch.iterdir()) == ["deep", "model.tar.gz"]
