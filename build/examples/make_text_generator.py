"""Make the text-generation example's weights: a tiny BLOOM, initialised from a config.

The example in streaming_repository/text_generator has the shape of the
common bloom-560m Python-backend example (a transformers text-generation
pipeline in model.py, loading with from_pretrained), but no network is
needed here, so this script writes a model of the same architecture with
RANDOM weights (2 layers, 64 wide, a byte-level BPE tokenizer trained on a
few sentences) into the model's version folder. Its text is gibberish: it
exists so that the code path (loading, generating, streaming tokens) is real.
Replace `1/generator/` with a real checkpoint (`save_pretrained` output of
bigscience/bloom-560m, say) to serve a real model with the same code.

transformers is not installed into serve's environment here (the
sentence-embedding example checks that its tokenizer's packages come only
from its own environment archive), so this script first installs it, with
the versions the image pins (container/requirements/models.in), into the model's
`1/packages/`, which model.py puts on its path when the folder exists; the
image has transformers itself.

Run: `.venv/bin/python build/examples/make_text_generator.py --repository streaming_repository`
(set-up does); --force rewrites existing files. The language-model example
(llm_repository/chat_generator) is the same tiny BLOOM with a chat template in
its tokenizer_config.json: `--repository llm_repository --model chat_generator
--chat-template` (set-up does that too).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# The image's pins (container/requirements/models.in); torch and numpy come from serve's env.
PACKAGES = [
    "transformers==4.46.3",
    "tokenizers==0.20.3",
    "safetensors==0.4.5",
    "huggingface-hub==0.26.2",
    "tqdm",
]

CORPUS = [
    "Triton serves models on SageMaker endpoints.",
    "The quick brown fox jumps over the lazy dog.",
    "Streaming sends each token as soon as the model makes it.",
    "A tiny model with random weights writes gibberish, quickly.",
]
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
# A ChatML-style template, as many chat models ship one: it lands in tokenizer_config.json's
# chat_template, where serve (and transformers' apply_chat_template) read it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("streaming_repository"))
    parser.add_argument("--model", default="text_generator")
    parser.add_argument(
        "--chat-template", action="store_true", help="write a chat template with the tokenizer"
    )
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    version = args.repository / args.model / "1"
    packages = version / "packages"
    if not (packages / "transformers").is_dir() or args.force:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        into = ["--no-deps", "--upgrade", "--target", str(packages)]
        subprocess.run([*pip, *into, *PACKAGES], check=True)
    target = version / "generator"
    if (target / "model.safetensors").is_file() and not args.force:
        print(f"{target} exists; --force rewrites it")
        return
    sys.path.insert(0, str(packages))
    write_generator(target, CHAT_TEMPLATE if args.chat_template else None)


def write_generator(target: Path, chat_template: str | None = None) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BloomConfig, BloomForCausalLM, PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(target)

    torch.manual_seed(0)
    config = BloomConfig(
        vocab_size=len(fast),
        hidden_size=64,
        n_layer=2,
        n_head=4,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    BloomForCausalLM(config).eval().save_pretrained(target, safe_serialization=True)
    for written in target.iterdir():
        written.chmod(0o644)
    print(f"wrote a {config.n_layer}-layer BLOOM with random weights to {target}")


if __name__ == "__main__":
    main()
