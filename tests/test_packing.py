"""The one packer (mora.data.packing): every token exactly once, in order, across documents and block
boundaries — through the pure generator, the cached ``datasets`` path and the streamed path alike."""

from __future__ import annotations

import json
import random

import datasets
import pytest

from mora.data.packing import PackedStream, pack, packed_dataset

EOS = 0


def random_documents(seed: int, n: int = 40, longest: int = 30) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 1000) for _ in range(rng.randrange(0, longest))] for _ in range(n)]


def stream_of(documents: list[list[int]], eos: int | None) -> list[int]:
    return [t for doc in documents for t in [*doc, *([eos] if eos is not None else [])]]


@pytest.mark.parametrize("seq_len", [1, 7, 16, 64, 1000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pack_keeps_every_token_once_in_order(seq_len, seed):
    documents = random_documents(seed)
    blocks = list(pack(documents, seq_len, EOS))
    assert [t for block in blocks for t in block] == stream_of(documents, EOS)  # nothing lost, repeated or moved
    assert all(len(block) == seq_len for block in blocks[:-1])  # fixed-length blocks ...
    assert 0 < len(blocks[-1]) <= seq_len  # ... and one shorter tail, never dropped


def test_pack_hand_example_documents_cross_block_boundaries():
    assert list(pack([[1, 2, 3], [4], [5, 6, 7, 8]], 4, EOS)) == [[1, 2, 3, 0], [4, 0, 5, 6], [7, 8, 0]]
    assert list(pack([[1, 2, 3], [4]], 2, None)) == [[1, 2], [3, 4]]
    assert list(pack([], 4, EOS)) == []
    assert list(pack([[]], 4, EOS)) == [[0]]  # an empty document still ends with eos


def test_pack_compacts_its_buffer_without_losing_tokens():
    documents = [list(range(1, 10_000))]  # one long document: many blocks emitted from one buffer
    blocks = list(pack(documents, 3, EOS))
    assert [t for b in blocks for t in b] == stream_of(documents, EOS)


def test_pack_refuses_a_non_positive_length():
    with pytest.raises(ValueError, match="seq_len must be positive"):
        list(pack([[1]], 0, EOS))


def test_packed_dataset_equals_the_generator():
    documents = random_documents(3)
    tokenized = datasets.Dataset.from_dict({"input_ids": documents})
    packed = packed_dataset(tokenized, 16, EOS)
    assert packed["input_ids"] == list(pack(documents, 16, EOS))


def test_packed_stream_reads_a_streamed_c4_format_file_like_the_generator(tmp_path):
    """The C4 code path (streamed JSON with text/timestamp/url) run on a local file of C4's schema."""
    from transformers import AutoTokenizer

    from mora.data.packing import tokenize_texts
    from mora.models import CHAR_TOKENIZER_DIR

    tokenizer = AutoTokenizer.from_pretrained(CHAR_TOKENIZER_DIR)
    texts = ["Beginners BBQ Class Taking Place in Missoula!", "Discussion in 'Mac OS X Lion (10.7)'", "Foil plaid lycra"]
    path = tmp_path / "c4-validation.00000-of-00008.json"
    path.write_text("".join(json.dumps({"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://x/{i}"}) + "\n"
                            for i, t in enumerate(texts)))
    streamed = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    stream = PackedStream(tokenize_texts(streamed, tokenizer), 16, tokenizer.eos_token_id)
    expected = list(pack(tokenizer(texts, add_special_tokens=False)["input_ids"], 16, tokenizer.eos_token_id))
    examples = list(stream)
    assert [e["input_ids"] for e in examples] == expected and all(e["labels"] == e["input_ids"] for e in examples)
    assert list(stream) == examples  # every iteration reads the stream from its start
    assert [e["input_ids"] for e in PackedStream(tokenize_texts(streamed, tokenizer), 16, tokenizer.eos_token_id,
                                                 limit_blocks=2)] == expected[:2]
