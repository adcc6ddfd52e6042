"""Word-level tokenizer for the synthetic review language, saved as JSON beside the model.

The language is space-separated words, so a word is a token. ``<pad>`` (id 0) and ``<eos>`` are
different tokens: padding is never learned or generated as the end of a response, and a
response's EOS is a real, scored action of the policy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import torch

from rlhf.errors import ConfigError

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIALS = (PAD, EOS, UNK)


class Tokenizer:
    """Maps words to ids: ``<pad>`` = 0, ``<eos>`` = 1, ``<unk>`` = 2, then ``words`` sorted."""

    def __init__(self, words: Iterable[str]) -> None:
        self.itos: list[str] = list(SPECIALS) + sorted(set(words) - set(SPECIALS))
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.eos_id, self.unk_id = (self.stoi[s] for s in SPECIALS)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        """Ids of the whitespace-separated words of ``text``; unknown words map to ``<unk>``."""
        ids = [self.stoi.get(w, self.unk_id) for w in text.split()]
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Words up to (not including) the first ``<eos>``, skipping ``<pad>``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i != self.pad_id:
                words.append(self.itos[i])
        return " ".join(words)

    def encode_batch(self, texts: Sequence[str], add_eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (ids, attention_mask), both (B, L) int64, ready for batched generation."""
        return left_pad([self.encode(t, add_eos) for t in texts], self.pad_id)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"itos": self.itos}, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        try:
            itos = json.loads(Path(path).read_text())["itos"]
        except (ValueError, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            itos = None
        if not isinstance(itos, list) or not all(isinstance(w, str) for w in itos):
            raise ConfigError(f"{path}: not a tokenizer file (expected JSON {{\"itos\": [words]}})")
        if tuple(itos[:len(SPECIALS)]) != SPECIALS:
            raise ConfigError(f"{path}: not a tokenizer file (expected {SPECIALS} first, got {itos[:3]})")
        tokenizer = cls(itos[len(SPECIALS):])
        if tokenizer.itos != itos:
            raise ConfigError(f"{path}: vocabulary is not in sorted order; ids would change on load")
        return tokenizer


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into (ids, attention_mask), (B, max_len) int64, padding on the left.

    Left padding puts every row's last real token in the last column, so a batch of prompts of
    different lengths can be extended one token per step in lockstep.
    """
    if not sequences:
        raise ValueError("left_pad needs at least one sequence")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids, mask
