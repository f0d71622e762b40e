"""Prompt tokenisation for the clap_text graph (RoBERTa byte-level BPE, `tokenizers`).

The original pads every prompt to 512 tokens; padding does not change the CLAP
embedding (the attention mask hides it: reference README §4), so prompts are
tokenised unpadded and a batch is padded only to its longest prompt.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from rewas_rt import constants as C
from rewas_rt.errors import InputError

PAD_ID = 1  # RoBERTa <pad>


class PromptTokenizer:
    def __init__(self, path: str | Path, max_tokens: int = C.TEXT_MAX_TOKENS):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens

    def ids(self, prompt: str, allow_empty: bool = False) -> list[int]:
        """Token ids with <s> … </s>; prompts over the limit are truncated with a warning."""
        if not prompt.strip() and not allow_empty:
            raise InputError("the prompt is empty: describe the sound, e.g. \"dog barking\"")
        enc = self._tok.encode(prompt)
        if enc.overflowing:
            warnings.warn(f"prompt longer than {self.max_tokens} tokens: truncated", stacklevel=2)
        return enc.ids

    def batch(self, prompts: list[str], allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both (B, L) int64, padded to the longest prompt."""
        seqs = [self.ids(p, allow_empty) for p in prompts]
        length = max(map(len, seqs))
        ids = np.full((len(seqs), length), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(seqs), length), dtype=np.int64)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return ids, mask
