"""A byte-level BPE tokenizer trained on a corpus, saved as a Hugging Face fast tokenizer.

Byte-level (GPT-2 style) so that any text — reST markup, digits, accents, Greek letters in an abstract —
encodes without unknown tokens.  Special tokens ``<pad>`` (0), ``<s>`` (1), ``</s>`` (2), ``<unk>`` (3);
none is added automatically (documents are separated by ``</s>`` when packed, tasks add what they need).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | Path, min_frequency: int = 2):
    """Train a byte-level BPE of ``vocab_size`` ids (specials included) on ``texts``; save it to
    ``out_dir`` and return it as a ``PreTrainedTokenizerFast``.  Deterministic for the same texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out_dir)
    return fast
