"""Train a text LM for shallow fusion (``lm_weight``) with ESPnet's ``LMTask``, on the CPU.

The text is the command grammar's *training* templates (never a held-out one,
which only ``test_hard`` reads), sampled with balanced intents and, with
probability ``vary``, recombined (:meth:`Grammar.vary`) so the LM sees word
orders no single template gives. Every sentence an evaluation set holds is left
out, so a figure measured with the LM is not a figure on its own training text.
The transcripts look like the ASR model's (``intent words``) and are tokenized
with the model's own BPE model and token list: the LM must score the ASR's ids.

The LM lands in ``OUT`` as an ESPnet LM experiment directory (``config.yaml`` +
``model.pth``); copied to ``MODEL/lm/``, :func:`pasu.models.load_model` loads it
with the model, and ``--lm-weight`` turns it on.

    python -m pasu.tools.train.lm --model shared/resources/models/cloud --out /tmp/lm
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMTrainOptions:
    model: Path  # the ASR model whose tokens (tokens.txt, bpe.model) the LM must use
    out: Path
    n_train: int = 100_000
    n_valid: int = 2_000
    vary: float = 0.5  # share of sentences recombined from two training sentences
    exclude: tuple[Path, ...] = ()  # `text` files whose sentences the LM must not see
    lm: str = "seq_rnn"  # ESPnet's --lm: seq_rnn (LSTM) or transformer
    unit: int = 256
    layers: int = 1
    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.002
    seed: int = 0
    threads: int = 1


def command_texts(n: int, seed: int, vary: float, exclude: set[str]) -> list[str]:
    """``n`` distinct-enough transcripts ``intent words`` from the training templates, balanced over intents."""
    from pasu.tools.data.grammar import Grammar

    grammar = Grammar.load()
    intents = grammar.intent_names
    rng = np.random.default_rng(seed)
    out: list[str] = []
    skipped = 0
    while len(out) < n:
        for i in rng.permutation(len(intents)):
            if len(out) >= n:
                break
            s = grammar.sample(rng, intents[int(i)], heldout=False)
            if rng.random() < vary:
                s = grammar.vary(rng, s)
            if s.text in exclude or grammar.heldout_match(s.text):
                skipped += 1
                continue
            out.append(f"{s.intent} {s.text}")
    log.info("%d sentences (%d distinct), %d skipped as evaluation or held-out text", n, len(set(out)), skipped)
    return out


def read_transcripts(text_files: tuple[Path, ...]) -> set[str]:
    """The word sequences (intent label dropped) of ESPnet ``text`` files."""
    out = set()
    for f in text_files:
        for line in f.read_text(encoding="utf-8").splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) == 3:
                out.add(parts[2])
    return out


def lm_config(opts: LMTrainOptions) -> dict:
    if opts.lm == "seq_rnn":
        # torch's LSTM applies dropout between layers only: one layer gets none
        conf = {"unit": opts.unit, "nlayers": opts.layers, "rnn_type": "lstm", "dropout_rate": 0.1 * (opts.layers > 1)}
    elif opts.lm == "transformer":
        conf = {
            "pos_enc": "sinusoidal",
            "embed_unit": opts.unit,
            "att_unit": opts.unit,
            "head": 4,
            "unit": 4 * opts.unit,
            "layer": opts.layers,
            "dropout_rate": 0.1,
        }
    else:
        raise ValueError(f"unknown LM {opts.lm!r}; choose seq_rnn or transformer")
    return {
        "lm": opts.lm,
        "lm_conf": conf,
        "model": "lm",
        "model_conf": {"ignore_id": 0},
        "optim": "adam",
        "optim_conf": {"lr": opts.lr},
        "batch_type": "unsorted",
        "batch_size": opts.batch_size,
        "max_epoch": opts.epochs,
        "best_model_criterion": [["valid", "loss", "min"]],
        "keep_nbest_models": 1,
    }


def train_lm(opts: LMTrainOptions) -> Path:
    """Write the text, run ``espnet2.bin.lm_train`` (resumable), leave ``OUT/config.yaml`` + ``OUT/model.pth``."""
    model = Path(opts.model)
    tokens, bpe = model / "tokens.txt", model / "bpe.model"
    for f in (tokens, bpe):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: the LM is tokenized with the model's own tokens")
    out = Path(opts.out)
    data, exp = out / "data", out / "exp"
    data.mkdir(parents=True, exist_ok=True)
    exclude = read_transcripts(opts.exclude)
    for name, n, seed in (("train", opts.n_train, opts.seed), ("valid", opts.n_valid, opts.seed + 1)):
        path = data / f"{name}.txt"
        if not path.is_file():
            lines = command_texts(n, seed, opts.vary, exclude)
            path.write_text("".join(f"{name}-{i:07d} {t}\n" for i, t in enumerate(lines)), encoding="utf-8")
    config = out / "train_lm.yaml"
    config.write_text(yaml.safe_dump(lm_config(opts), sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "espnet2.bin.lm_train",
        "--config",
        str(config),
        "--output_dir",
        str(exp),
        "--token_type",
        "bpe",
        "--bpemodel",
        str(bpe.resolve()),
        "--token_list",
        str(tokens.resolve()),
        "--use_preprocessor",
        "true",
        "--train_data_path_and_name_and_type",
        f"{data / 'train.txt'},text,text",
        "--valid_data_path_and_name_and_type",
        f"{data / 'valid.txt'},text,text",
        # unsorted batches read only the keys from these
        "--train_shape_file",
        str(data / "train.txt"),
        "--valid_shape_file",
        str(data / "valid.txt"),
        "--ngpu",
        "0",
        "--num_workers",
        "0",
        "--seed",
        str(opts.seed),
        "--resume",
        "true",
        "--use_tensorboard",
        "false",
        "--use_matplotlib",
        "false",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(opts.threads)
    exp.mkdir(parents=True, exist_ok=True)
    log_file = exp / "train.log"
    log.info("training the LM (log: %s)", log_file)
    t0 = time.process_time()
    with open(log_file, "a", encoding="utf-8") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=True)
    log.info("LM trained (%.0f s CPU in this process's children)", time.process_time() - t0)
    return package_lm(exp, out)


def package_lm(exp: Path, out: Path) -> Path:
    """``OUT/config.yaml`` (tokens inline; ``bpemodel: bpe.model``, found beside the ASR model) + ``OUT/model.pth``."""
    best = exp / "valid.loss.best.pth"
    if not best.is_file():
        raise FileNotFoundError(f"no {best}: did ESPnet finish an epoch? see {exp / 'train.log'}")
    config = yaml.safe_load((exp / "config.yaml").read_text(encoding="utf-8"))
    config["bpemodel"] = "bpe.model"
    for key in ("train_data_path_and_name_and_type", "valid_data_path_and_name_and_type"):
        config[key] = []
    config["train_shape_file"], config["valid_shape_file"] = [], []
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    shutil.copyfile(best, out / "model.pth")
    log.info("LM packaged in %s (%.1f MB)", out, (out / "model.pth").stat().st_size / 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pasu.tools.train.lm", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="ASR model dir (its tokens.txt and bpe.model)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--exclude", type=Path, action="append", default=[], help="a `text` file to keep out (repeat)")
    d = LMTrainOptions(Path(), Path())
    for name in ("n_train", "n_valid", "unit", "layers", "epochs", "batch_size", "seed", "threads"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--vary", type=float, default=d.vary)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lm", choices=("seq_rnn", "transformer"), default=d.lm)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    opts = LMTrainOptions(
        model=a.model,
        out=a.out,
        exclude=tuple(a.exclude),
        **{k: getattr(a, k) for k in ("n_train", "n_valid", "unit", "layers", "epochs", "batch_size", "seed")},
        threads=a.threads,
        vary=a.vary,
        lr=a.lr,
        lm=a.lm,
    )
    print(train_lm(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
