"""Regenerate the bundled character tokenizer in ``mora/assets/char_tokenizer/`` (no network).

    .venv/bin/python scripts/build_char_tokenizer.py            # rewrite the committed files
    .venv/bin/python scripts/build_char_tokenizer.py --check    # exit 1 if they differ from a rebuild

Vocabulary (101 ids): ``<pad>``=0, ``<s>``=1 (bos), ``</s>``=2 (eos), ``<unk>``=3, then the 95 printable
ASCII characters (space … ``~``) in code-point order, then ``\\n`` and ``\\t``.  Every character is
one token (a ``WordLevel`` model behind a pre-tokenizer that isolates each character), the ``Fuse``
decoder joins tokens back without spaces, so ``decode(encode(s)) == s`` for any text over that
alphabet; anything else becomes ``<unk>``.  A ``TemplateProcessing`` post-processor puts ``<s>`` in
front of every sequence (eos is the data code's business).  The chat template is open-instruct's
Tulu format (``<s><|user|>\\n…\\n<|assistant|>\\n…</s>\\n``) so lm-eval's ``apply_chat_template`` works.

The files are written with sorted keys and fixed formatting, so a rebuild is byte-identical.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

OUT = Path(__file__).resolve().parent.parent / "mora" / "assets" / "char_tokenizer"
SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
CHARS = [chr(c) for c in range(32, 127)] + ["\n", "\t"]

# open-instruct's Tulu v2 message format (encode_with_messages_format), as a Jinja chat template.  It
# opens with bos_token, as HF templates do: apply_chat_template (and lm-eval, which renders the template
# to text and then encodes it without special tokens) must not rely on the post-processor for <s>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] | trim + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] | trim + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] | trim + eos_token + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build() -> Tokenizer:
    specials = list(SPECIALS.values())
    vocab = {token: i for i, token in enumerate(specials + CHARS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIALS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per char
    tokenizer.decoder = decoders.Fuse()  # join without separators: spaces/newlines come back verbatim
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


def files() -> dict[str, str]:
    """File name → exact text of every asset file."""
    tokenizer_json = json.dumps(json.loads(build().to_str()), indent=2, ensure_ascii=False) + "\n"
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **SPECIALS,
        "model_max_length": 1_000_000_000,  # the model's max_position_embeddings is the real limit
        "clean_up_tokenization_spaces": False,  # would eat the space in " ." etc.
        "add_bos_token": True,  # documents the post-processor; it is what adds <s>
        "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    dump = lambda obj: json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"  # noqa: E731
    return {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": dump(config),
        "special_tokens_map.json": dump(SPECIALS),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare the committed files with a rebuild")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output directory (default: {OUT})")
    args = parser.parse_args()
    stale = []
    for name, text in files().items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)} — run scripts/build_char_tokenizer.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
