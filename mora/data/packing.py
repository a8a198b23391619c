"""Packing: documents of tokens in, fixed-length training blocks out — the one packer of the suite.

Language-model pretraining (C4, the pocket corpus) and continual pretraining (biomedical and finance
text) train on *packed* sequences: every document is followed by ``eos``, the documents are
concatenated into one stream, and the stream is cut into blocks of ``seq_len`` tokens.  No token is
dropped and none is repeated: a document runs over a block boundary into the next block, and the tail
of the stream is one last, shorter block (the collator pads it; padding gets no loss).  Attention is
not masked at document boundaries (as ReLoRA and most pretraining code): ``eos`` tells the model a new
document starts.

Three ways in, one packer (:func:`pack`) underneath:

* :func:`pack` — any iterable of token lists → block lists (pure Python; what the tests pin down).
* :func:`packed_dataset` — a tokenized ``datasets.Dataset`` → a ``datasets.Dataset`` of blocks, built once
  and cached by fingerprint (a rerun with the same data, tokenizer and ``seq_len`` reads it back).
* :class:`PackedStream` — a streamed ``datasets.IterableDataset`` (C4 en is hundreds of GB: never
  downloaded whole) → a torch ``IterableDataset`` of blocks, produced on the fly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch.utils.data import IterableDataset


def pack(documents: Iterable[Sequence[int]], seq_len: int, eos_id: int | None) -> Iterator[list[int]]:
    """Blocks of ``seq_len`` tokens from the concatenation of ``doc + [eos_id]`` for every document
    (no eos appended when ``eos_id`` is None); the last block holds the remainder and may be shorter."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    buffer: list[int] = []
    start = 0  # buffer[start:] is not emitted yet; compacted now and then instead of re-slicing per block
    for doc in documents:
        buffer.extend(doc)
        if eos_id is not None:
            buffer.append(eos_id)
        while len(buffer) - start >= seq_len:
            yield buffer[start:start + seq_len]
            start += seq_len
        if start > 64 * seq_len:
            del buffer[:start]
            start = 0
    if len(buffer) > start:
        yield buffer[start:]


def tokenize_texts(texts, tokenizer, num_proc: int | None = None):
    """``{"text"}`` rows → ``{"input_ids"}`` rows (no special tokens: the packer adds eos between documents).

    Works on a ``datasets.Dataset`` (``map`` with the fingerprint cache, ``num_proc`` workers) and on a
    streamed ``datasets.IterableDataset`` (tokenized lazily)."""
    kwargs: dict[str, Any] = {"batched": True, "fn_kwargs": {"tokenizer": tokenizer}, "remove_columns": list(texts.column_names or ["text"])}
    if hasattr(texts, "cache_files"):  # map-style: parallel and cached
        kwargs.update(num_proc=num_proc, desc="tokenizing")
    return texts.map(_tokenize_batch, **kwargs)


def _tokenize_batch(batch: dict, tokenizer) -> dict:
    return {"input_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]}


def packed_dataset(tokenized, seq_len: int, eos_id: int | None):
    """A ``datasets.Dataset`` with one ``input_ids`` block per row, cached by the fingerprint of
    ``tokenized`` (and ``seq_len``, ``eos_id``): built once per data × tokenizer × length."""
    import datasets

    return datasets.Dataset.from_generator(
        _blocks, gen_kwargs={"tokenized": tokenized, "seq_len": seq_len, "eos_id": eos_id},
        features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))}),
    )


def _blocks(tokenized, seq_len: int, eos_id: int | None) -> Iterator[dict]:
    documents = (row["input_ids"] for row in tokenized)
    for block in pack(documents, seq_len, eos_id):
        yield {"input_ids": block}


class PackedStream(IterableDataset):
    """Blocks packed on the fly from a stream of tokenized documents (``{"input_ids"}`` rows), as
    ``{"input_ids", "labels"}`` examples.  ``limit_blocks`` stops after that many blocks (an evaluation
    budget); the stream is read afresh from its start on every iteration."""

    def __init__(self, tokenized_stream, seq_len: int, eos_id: int | None, limit_blocks: int | None = None):
        self.stream, self.seq_len, self.eos_id, self.limit_blocks = tokenized_stream, seq_len, eos_id, limit_blocks

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        documents = (row["input_ids"] for row in self.stream)
        for i, block in enumerate(pack(documents, self.seq_len, self.eos_id)):
            if self.limit_blocks is not None and i >= self.limit_blocks:
                return
            yield {"input_ids": block, "labels": list(block)}
