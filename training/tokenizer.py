"""The ``tokenizer.json`` of an engine directory (``tokenizers`` library only).

* From a RoBERTa tokenizer folder (what CLAP uses): its ``tokenizer.json`` as is, or
  ``vocab.json`` + ``merges.txt`` turned into a byte-level BPE tokenizer with RoBERTa's
  post-processor (``<s> … </s>``).
* For random-weight models whose CLAP vocabulary is small (the "tiny" preset): a byte-level
  BPE trained deterministically on a fixed built-in corpus, with exactly that many tokens
  and RoBERTa's special ids (``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2), so "" → [0, 2].

Either way truncation at ``TEXT_MAX_TOKENS`` is part of the file and padding is not (the
runtime tokenizes unpadded: docs/design.md §1, stage 7).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from rewas_rt import constants as C
from rewas_rt.errors import RewasError

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa ids 0..3, <mask> last in roberta-base
BOS, PAD, EOS = 0, 1, 2


class TokenizerError(RewasError, ValueError):
    pass


# A fixed corpus of sound descriptions: enough distinct byte pairs for a few hundred merges.
_WORDS = (
    "dog barking cat meowing birds chirping rain falling thunder rumbling car engine revving train horn "
    "blowing people talking crowd cheering baby crying water splashing wind blowing fire crackling glass "
    "breaking door slamming footsteps on gravel keyboard typing church bells ringing helicopter flying ocean "
    "waves crashing violin playing drums beating guitar strumming piano melody siren wailing chainsaw cutting "
    "wood hammer hitting nail frog croaking cow mooing horse galloping sheep bleating duck quacking rooster "
    "crowing airplane taking off motorcycle passing skateboard rolling basketball bouncing tennis ball hit "
    "lion roaring wolf howling bee buzzing clock ticking phone ringing alarm beeping applause laughter whistle "
    "kettle boiling microwave humming vacuum cleaner running lawn mower truck reversing bus braking ambulance "
    "passing subway arriving bicycle bell owl hooting crickets chirping pig oinking goat bleating elephant "
    "trumpeting monkey screaming snake hissing typewriter clicking camera shutter zipper opening paper "
    "rustling coins dropping"
).split()
_TAILS = ("loudly", "softly", "in the distance", "nearby", "while a man speaks", "with echo")


def _tiny_corpus():
    for a, b, c in itertools.product(_WORDS, _WORDS[::3], _TAILS):
        yield f"A {a} {b} {c}."


def _roberta_pipeline(tok):
    from tokenizers import decoders, pre_tokenizers, processors

    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(  # (sep, cls): positional only in this binding
        (SPECIAL_TOKENS[EOS], EOS), (SPECIAL_TOKENS[BOS], BOS), trim_offsets=True, add_prefix_space=False)
    tok.enable_truncation(max_length=C.TEXT_MAX_TOKENS)
    tok.no_padding()
    return tok


def fit_bpe(corpus, vocab_size: int):
    """A byte-level BPE trained deterministically on ``corpus`` (an iterable of texts), at most
    ``vocab_size`` tokens, with RoBERTa's special tokens, ids and pipeline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return _roberta_pipeline(tok)


def train_tiny(vocab_size: int):
    """A deterministic byte-level BPE with exactly ``vocab_size`` tokens (>= 261)."""
    from tokenizers import pre_tokenizers

    base = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size < base:
        raise TokenizerError(f"a byte-level BPE needs at least {base} tokens, the CLAP vocabulary has {vocab_size}")
    tok = fit_bpe(_tiny_corpus(), vocab_size)
    if tok.get_vocab_size() != vocab_size:
        raise TokenizerError(f"the built-in corpus gives {tok.get_vocab_size()} tokens, not {vocab_size}")
    return tok


def from_folder(folder: str | Path):
    """A RoBERTa tokenizer from ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``."""
    from tokenizers import Tokenizer, models

    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerError(f"tokenizer folder {folder} does not exist")
    if (folder / "tokenizer.json").is_file():
        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - the library raises plain Exceptions
            raise TokenizerError(f"{folder / 'tokenizer.json'}: cannot be read ({e})") from None
        # Kept as shipped (pre-tokenizer, post-processor), but truncated like the CLAP wrapper, unpadded.
        tok.enable_truncation(max_length=C.TEXT_MAX_TOKENS)
        tok.no_padding()
        return tok
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise TokenizerError(f"{folder}: no tokenizer.json, and no vocab.json + merges.txt")
    try:
        bpe = models.BPE.from_file(str(vocab), str(merges))
    except Exception as e:  # noqa: BLE001
        raise TokenizerError(f"{folder}: vocab.json/merges.txt cannot be read ({e})") from None
    tok = Tokenizer(bpe)
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise TokenizerError(f"{vocab}: no special token(s) {', '.join(missing)} (not a RoBERTa vocabulary)")
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return _roberta_pipeline(tok)


def check(tok, vocab_size: int, pad_id: int = PAD) -> dict:
    """Facts the manifest records; raises when the tokenizer cannot feed the CLAP graph."""
    uncond = tok.encode("").ids
    if tuple(uncond) != tuple(C.UNCOND_TEXT_IDS):
        raise TokenizerError(f'the tokenizer encodes "" as {uncond}, the model expects {list(C.UNCOND_TEXT_IDS)} '
                             "(a RoBERTa tokenizer with its <s> … </s> post-processor)")
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:
        raise TokenizerError(f"the tokenizer has {n} tokens, the CLAP text model only {vocab_size}")
    if tok.token_to_id(SPECIAL_TOKENS[PAD]) != pad_id:
        raise TokenizerError(f"<pad> has id {tok.token_to_id(SPECIAL_TOKENS[PAD])}, the model pads with {pad_id}")
    return {"unconditional_ids": list(uncond), "pad_id": pad_id, "bos_id": BOS, "eos_id": EOS,
            "max_tokens": C.TEXT_MAX_TOKENS, "vocab_size": n}


def to_json(tok) -> str:
    """Canonical text (stable key order), so identical tokenizers give identical checksums."""
    return json.dumps(json.loads(tok.to_str()), indent=1, ensure_ascii=False, sort_keys=True) + "\n"
