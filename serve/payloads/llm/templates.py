"""Chat templates as models ship them, rendered in jinja2's sandbox.

A chat request's messages become the model's prompt through the template the
model ships: `chat_template` in a `tokenizer_config.json` (or the
`chat_template.jinja` that newer transformers write beside it) in the model's
folder, or a file `SERVE_CHAT_TEMPLATE` names. It is rendered as Hugging Face's
`apply_chat_template` renders it (jinja2's ImmutableSandboxedEnvironment,
`trim_blocks` and `lstrip_blocks`, `raise_exception`, `strftime_now`, a
`tojson` that keeps non-ASCII text), with `add_generation_prompt` and the
tokenizer's special tokens (`bos_token`, `eos_token`, ...). The sandbox keeps a
template, or messages shaped to look like template code, from reaching
Python's internals. A model without a template is refused with a clear error;
serve never joins the messages into a prompt of its own making, which would
reach the model in a format it was not trained on.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from serve.errors import ConfigError, ModelMisconfigured, PayloadError

log = logging.getLogger(__name__)

TOKENIZER_CONFIG = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
# A tokenizer_config.json or template larger than this is not one (vocabularies live
# in tokenizer.json); it is skipped, not read.
MAX_TEMPLATE_BYTES = 4 * 1024 * 1024
# How deep in a model's folder a tokenizer's files are looked for (1/generator/...).
SEARCH_DEPTH = 4
SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
)
# Folders no tokenizer is looked for in: packages installed beside a model.
SKIPPED_FOLDERS = frozenset({"packages", "site-packages", "__pycache__", "node_modules"})


class _RaisedByTemplate(Exception):
    """A template's own `raise_exception(...)`: it refuses the messages (the caller's 400)."""


def _raise_exception(message: str) -> None:
    raise _RaisedByTemplate(message)


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template, compiled, with the special tokens it may name."""

    source: str
    template: jinja2.Template
    tokens: Mapping[str, str]

    @classmethod
    def compile(cls, text: str, source: str, tokens: Mapping[str, str]) -> ChatTemplate:
        try:
            return cls(source, _environment().from_string(text), dict(tokens))
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"the chat template in {source} does not compile: {exc}") from exc

    def render(
        self, messages: Sequence[Mapping[str, object]], tools: Sequence[object] | None = None
    ) -> str:
        """The prompt for `messages`, ending where the assistant's answer starts."""
        try:
            return self.template.render(
                messages=messages,
                tools=tools,
                add_generation_prompt=True,
                **self.tokens,
            )
        except _RaisedByTemplate as exc:
            raise PayloadError(
                f"the model's chat template ({self.source}) refuses these messages: {exc}"
            ) from exc
        except jinja2.TemplateError as exc:
            raise ModelMisconfigured(
                f"the model's chat template ({self.source}) failed on these messages: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def find_chat_template(model_dir: Path, named: Path | None = None) -> ChatTemplate | None:
    """The model's chat template: `named` (SERVE_CHAT_TEMPLATE; relative to the model's
    folder), else the first tokenizer_config.json holding one in the model's folder,
    shallowest first. None when there is none; ConfigError for a named file that
    cannot be used, or a template that does not compile."""
    if named is not None:
        path = named if named.is_absolute() else model_dir / named
        if not path.is_file():
            raise ConfigError(
                f"SERVE_CHAT_TEMPLATE={named} is not a file (read relative to the model's "
                f"folder, {model_dir}); name a tokenizer_config.json or a Jinja template"
            )
        if path.suffix == ".json":
            found = _from_tokenizer_config(path)
            if found is None:
                raise ConfigError(f"SERVE_CHAT_TEMPLATE={named}: {path} holds no chat_template")
            return found
        return ChatTemplate.compile(_read(path), str(path), _tokens(path.parent))
    for config in _tokenizer_configs(model_dir):
        found = _from_tokenizer_config(config)
        if found is not None:
            return found
    return None


def _tokenizer_configs(model_dir: Path) -> list[Path]:
    found: list[tuple[int, str, Path]] = []
    root = str(model_dir)
    for folder, subfolders, files in os.walk(model_dir, followlinks=True):
        depth = Path(folder).relative_to(root).parts
        if len(depth) >= SEARCH_DEPTH:
            subfolders[:] = []
        subfolders[:] = sorted(
            d for d in subfolders if d not in SKIPPED_FOLDERS and not d.startswith(".")
        )
        if TOKENIZER_CONFIG in files:
            path = Path(folder) / TOKENIZER_CONFIG
            found.append((len(depth), str(path), path))
    return [path for _, _, path in sorted(found)]


def _from_tokenizer_config(path: Path) -> ChatTemplate | None:
    """The template a tokenizer's folder holds: chat_template.jinja beside the config, or
    the config's chat_template (a string, or Hugging Face's list of named templates)."""
    beside = path.parent / TEMPLATE_FILE
    if beside.is_file():
        return ChatTemplate.compile(_read(beside), str(beside), _tokens(path.parent))
    config = _config(path)
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template.strip():
        return None
    return ChatTemplate.compile(template, str(path), _tokens(path.parent))


def _tokens(folder: Path) -> dict[str, str]:
    """The special tokens the template may name, from the folder's tokenizer_config.json."""
    path = folder / TOKENIZER_CONFIG
    config = _config(path) if path.is_file() else {}
    tokens = {}
    for name in SPECIAL_TOKENS:
        value = config.get(name)
        if isinstance(value, dict):  # an AddedToken, as save_pretrained writes it
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens


def _config(path: Path) -> dict[str, object]:
    try:
        document = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        log.warning("%s is not valid JSON (%s); it is not read for a chat template", path, exc)
        return {}
    return document if isinstance(document, dict) else {}


def _read(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_TEMPLATE_BYTES:
        raise ConfigError(
            f"{path} is {size} bytes, more than a chat template's {MAX_TEMPLATE_BYTES}"
        )
    return path.read_text(encoding="utf-8", errors="replace")
