"""The token inventory: a small sentencepiece BPE with every intent label as one piece.

Why BPE and not characters: the attention decoder runs once per output token,
and pasu's pilot inference re-decodes many times per utterance, so ~12 BPE
pieces per command instead of ~40 characters makes every decode ~3x cheaper on
the device. The intents are ``user_defined_symbols`` so each label is exactly
one token (the first one the decoder emits, after the word-boundary piece) —
the same role ``non_linguistic_symbols`` plays in ESPnet's character recipes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

BLANK = "<blank>"
UNK = "<unk>"
SOS_EOS = "<sos/eos>"


def read_nlsyms(path: Path) -> list[str]:
    """Intent labels, one per line (``shared/resources/slu/nlsyms.txt``)."""
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def read_text(path: Path) -> dict[str, str]:
    """An ESPnet ``text`` file: uttid -> everything after it (intent label first)."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        uttid, _, rest = line.partition(" ")
        if uttid:
            out[uttid] = rest.strip()
    return out


def train_bpe(
    text_files: Sequence[Path],
    intents: Sequence[str],
    out_dir: Path,
    vocab_size: int = 300,
    seed_sentencepiece_size: int = 100_000,
) -> tuple[Path, Path]:
    """Train ``bpe.model`` on the training transcripts and write ESPnet's ``tokens.txt``.

    ``vocab_size`` counts the intent labels too. ``hard_vocab_limit`` is off so a
    tiny smoke corpus still trains (it simply gets fewer pieces).

    Returns (bpe.model, tokens.txt).
    """
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "bpe_train.txt"
    lines = [t for f in text_files for t in read_text(f).values() if t.strip()]
    if not lines:  # sentencepiece aborts the process on an empty corpus: fail in Python instead
        raise ValueError(f"no transcripts to train the BPE model on in {', '.join(map(str, text_files))}")
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prefix = out_dir / "bpe"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        input_sentence_size=seed_sentencepiece_size,
        user_defined_symbols=list(intents),
        hard_vocab_limit=False,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        minloglevel=2,
        num_threads=1,  # tiny corpora train in well under a second; no thread pool to fail to start
    )
    sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_unknown(i)]
    tokens = [BLANK, UNK, *pieces, SOS_EOS]
    token_file = out_dir / "tokens.txt"
    token_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    missing = [i for i in intents if sp.piece_to_id(i) == sp.unk_id()]
    if missing:
        raise RuntimeError(f"intent labels not single BPE pieces: {missing[:5]}")
    log.info("BPE: %d pieces (%d intent labels) -> %s", len(pieces), len(intents), token_file)
    return Path(str(prefix) + ".model"), token_file
