"""The recipe: corpus -> tokens -> MVN stats -> bootstrap -> device CTC -> cloud -> device -> packages.

The order is what a 2-core CPU can train (docs/models.md). A from-scratch
full-attention encoder barely learns CTC there, while the late-context encoder
(convolutions below) does; so: a short *bootstrap* Branchformer run gives a
front end, a decoder that knows the grammar, and the per-layer attention weights
that set the device's split; the device encoder learns CTC (*device_ctc*); the
*cloud* Conformer is grown from it (:mod:`pasu.tools.train.grow`) and trains encoder
and decoder together; last, the *device* adapts to the cloud's decoder, frozen,
so both shipped models carry the same decoder.

With ``init_models`` (``pasu train --init-from DIR``) the recipe instead
*continues* a trained pair on a new corpus: tokens and MVN statistics come from
the pair, the bootstrap stages are skipped, and cloud and device train side by
side, each from its own weights, both with the shared decoder frozen, so the
two stay interchangeable without a further device stage. With
``retrain_decoder`` (a corpus with new text) the cloud trains the decoder as
well, and the device then adapts to the new one, frozen, as from scratch.

Every stage is one function that skips when its outputs exist, so rerunning
``pasu train`` after an interruption resumes where it stopped; the training
stages also pass ``--resume true`` so ESPnet continues from its last epoch
checkpoint. Training itself is ESPnet's trainer (``python -m
pasu.tools.train.asr_train`` = ``ASRTask.main`` with ``late_context`` registered),
run as a subprocess whose log goes to ``<exp>/<model>/train.log``, as asr.sh
does — the models are ordinary ESPnet models.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pasu.resources import ROOT as RESOURCES
from pasu.tools.train import tokens as tok

log = logging.getLogger(__name__)

CONFIG_DIR = RESOURCES / "configs"
NLSYMS = RESOURCES / "slu" / "nlsyms.txt"
STAGES = ("tokens", "stats", "bootstrap", "branches", "device_ctc", "cloud", "device", "package", "eval")
#: The models the recipe trains, in order; the last two are shipped.
ROLES = ("bootstrap", "device_ctc", "cloud", "device")
#: What a fine-tuned pair (``init_models``) already has: these stages do not run.
FINETUNE_SKIPS = ("bootstrap", "branches", "device_ctc")
# PASU's rule: keep self-attention only in layers whose attention branch carries
# more than this share of a trained Branchformer layer's output.
ATTENTION_WEIGHT_THRESHOLD = 0.2
# ...but never more than this share of the device's blocks (see choose_attention_blocks).
MAX_ATTENTION_FRACTION = 0.5


@dataclass(frozen=True)
class RecipeOptions:
    """Everything a recipe run depends on; the defaults are the shipped model pair."""

    data_dir: Path = Path("data/synth")  # pasu data synth output: train/ dev/ test_*/
    exp_dir: Path = Path("exp/train")
    bootstrap_config: Path = CONFIG_DIR / "train_bootstrap.yaml"
    cloud_config: Path = CONFIG_DIR / "train_cloud.yaml"
    device_config: Path = CONFIG_DIR / "train_device.yaml"
    nlsyms: Path = NLSYMS
    bpe_vocab_size: int = 300  # including the 54 intent labels
    train_set: str = "train"
    valid_set: str = "dev"
    test_sets: tuple[str, ...] = ("test_voices", "test_hard")
    max_epoch: int | None = None  # override the configs (timing / smoke runs)
    num_workers: int = 1  # data-loader processes per training run
    # torch threads per ESPnet run. One, measured: on a 2-core machine the data
    # loader takes part of the second core, and with any neighbour load two
    # OpenMP threads stall at every barrier (docs/models.md, "One torch thread").
    num_threads: int | None = 1
    seed: int = 0
    # None: from the bootstrap model's measured attention-branch weights.
    device_attention_blocks: int | None = None
    branch_utterances: int = 100  # dev utterances to measure the branch weights on
    device_ctc_epochs: int = 4  # CTC-only epochs of the device encoder before the cloud grows from it
    eval_limit: int | None = None  # utterances per test set in the eval stage
    eval_beam_size: int = 10
    version: str = "1"
    # A dir with cloud/ and device/ model packages (e.g. shared/resources/models):
    # fine-tune that pair instead of training from scratch (see the module docstring).
    init_models: Path | None = None
    finetune_epochs: int = 4  # epochs of each model in fine-tune mode (--max-epoch overrides)
    # Fine-tune mode only: the cloud trains the shared decoder too (new text, e.g.
    # `pasu data synth --text-variety`, is what the decoder has to learn), then the
    # device adapts to the cloud's new decoder, frozen — one after the other.
    retrain_decoder: bool = False
    # Epochs of one role, over everything else: a deeper cloud's epochs take longer
    # than the device's, and side by side both should finish at about the same time.
    role_epochs: Mapping[str, int] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()  # appended to every asr_train call
    # How the packages store their weights. "float16" halves a package (ESPnet and
    # pasu load it into a float32 model: load_state_dict casts), which is what lets
    # a deeper cloud fit the 30 MB a package may take; inference stays float32.
    weights_dtype: str = "float32"
    stages: tuple[str, ...] = STAGES

    def with_(self, **changes: Any) -> RecipeOptions:
        return replace(self, **changes)

    # Where each stage puts its outputs.
    @property
    def token_dir(self) -> Path:
        return self.exp_dir / "tokens"

    @property
    def stats_dir(self) -> Path:
        return self.exp_dir / "stats"

    @property
    def models_dir(self) -> Path:
        return self.exp_dir / "models"

    def model_exp(self, role: str) -> Path:
        return self.exp_dir / role

    @property
    def stats_file(self) -> Path:
        """Global MVN statistics: a fine-tuned pair keeps the normalisation it learned with."""
        if self.init_models is not None:
            return self.init_models / "cloud" / "feats_stats.npz"
        return self.stats_dir / "train" / "feats_stats.npz"

    def init_model(self, role: str) -> Path:
        assert self.init_models is not None
        return self.init_models / role

    def epochs(self, role: str) -> int:
        """Epochs a training stage runs: its --epochs, --max-epoch, else the fine-tune or config default."""
        if role in self.role_epochs:
            return self.role_epochs[role]
        if self.max_epoch:
            return self.max_epoch
        if self.init_models is not None:
            return self.finetune_epochs
        if role == "device_ctc":
            return self.device_ctc_epochs
        return int(yaml.safe_load(self.base_config(role).read_text())["max_epoch"])

    def base_config(self, role: str) -> Path:
        return {
            "bootstrap": self.bootstrap_config,
            "device_ctc": self.device_config,
            "device": self.device_config,
            "cloud": self.cloud_config,
        }[role]


@dataclass
class StageTimer:
    """Seconds per stage, kept in ``<exp>/timings.json`` across resumptions.

    ``<stage>`` is wall-clock time; ``<stage>_cpu`` the CPU time of this process
    and its children (ESPnet, its data loaders). On a shared machine the wall
    time depends on the neighbours; CPU time over the core count estimates what
    a machine to itself would take.
    """

    path: Path
    times: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.path.is_file():
            self.times = json.loads(self.path.read_text())

    def record(self, stage: str, seconds: float, cpu_seconds: float) -> None:
        self.times[stage] = round(self.times.get(stage, 0.0) + seconds, 1)
        self.times[f"{stage}_cpu"] = round(self.times.get(f"{stage}_cpu", 0.0) + cpu_seconds, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.times, indent=2) + "\n")


# --------------------------------------------------------------------- stages


def stage_tokens(opts: RecipeOptions) -> None:
    """BPE model + ``tokens.txt`` from the training transcripts."""
    if (opts.token_dir / "tokens.txt").is_file():
        log.info("tokens: %s exists, skipping", opts.token_dir / "tokens.txt")
        return
    if opts.init_models is not None:  # the pair's own: its output layers index them
        cloud, device = opts.init_model("cloud"), opts.init_model("device")
        for name in ("tokens.txt", "bpe.model"):
            if (cloud / name).read_bytes() != (device / name).read_bytes():
                raise ValueError(f"{cloud / name} and {device / name} differ: not one pair")
        opts.token_dir.mkdir(parents=True, exist_ok=True)
        for name in ("tokens.txt", "bpe.model"):
            shutil.copy(cloud / name, opts.token_dir / name)
        log.info("tokens: copied from %s", cloud)
        return
    tok.train_bpe(
        [opts.data_dir / opts.train_set / "text"],
        tok.read_nlsyms(opts.nlsyms),
        opts.token_dir,
        vocab_size=opts.bpe_vocab_size,
    )


def stage_stats(opts: RecipeOptions) -> None:
    """ESPnet ``--collect_stats``: global MVN statistics and the shape files for batching."""
    stats = opts.stats_dir
    done = stats / "train" / "text_shape.bpe"
    if done.is_file():
        log.info("stats: %s exists, skipping", stats)
        return
    if stats.exists():
        shutil.rmtree(stats)  # a half-written stats dir: start it over
    cmd = [
        "--collect_stats",
        "true",
        "--config",
        str(opts.bootstrap_config),
        "--normalize",
        "none",
        "--specaug",
        "none",
        *_data_args(opts, shapes=False),
        "--output_dir",
        str(stats),
    ]
    _run_espnet(cmd, stats.parent / "stats.log", opts)
    n_tokens = len(_read_lines(opts.token_dir / "tokens.txt"))
    for split in ("train", "valid"):
        # asr.sh's convention: text_shape gets the vocabulary size as 2nd dimension.
        lines = _read_lines(stats / split / "text_shape")
        (stats / split / "text_shape.bpe").write_text("".join(f"{ln},{n_tokens}\n" for ln in lines))


def stage_train(opts: RecipeOptions, role: str) -> None:
    """Train one of :data:`ROLES` with ESPnet's trainer (resumable).

    The cloud trains the decoder it took from the bootstrap; the device takes the
    cloud's and never updates it: the two shipped models carry the same decoder.
    """
    out = opts.model_exp(role)
    base = opts.base_config(role)
    epochs = opts.epochs(role)
    done = out / "train.done"
    if done.is_file() and _done_epochs(done) >= epochs:
        log.info("%s: %s says %d epochs are done, skipping", role, done, _done_epochs(done))
        return
    out.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []
    config = out / "train.yaml"
    if role == "bootstrap":
        config = base
    elif config.is_file():  # resuming: keep the architecture the checkpoints have
        log.info("%s: reusing %s", role, config)
    elif opts.init_models is not None:
        write_finetune_config(base, opts.init_model(role) / "config.yaml", config)
    elif role == "cloud":
        write_cloud_config(opts, config)
    else:
        write_device_config(opts, config)
    bootstrap = opts.model_exp("bootstrap")
    if opts.init_models is not None:
        extra += ["--init_param", str(opts.init_model(role) / "model.pth")]
        if opts.retrain_decoder and role == "device":  # later --init_param entries win
            extra += [f"{best_checkpoint(opts.model_exp('cloud'))}:decoder:decoder"]
        if not (opts.retrain_decoder and role == "cloud"):
            extra += ["--freeze_param", "decoder"]
    elif role == "device_ctc":
        # CTC only (ESPnet then builds no decoder): the bootstrap's decoder has not
        # seen a working encoder and would only pull this one towards its mistakes
        extra += ["--model_conf", "ctc_weight=1.0"]
        init = warm_start_params(opts, config, best_checkpoint(bootstrap))
        if init:
            extra += ["--init_param", *init]
    elif role == "cloud":
        encoder = opts.model_exp("device_ctc")
        grown = out / "grown_init.pth"
        if not grown.is_file():  # resuming: the checkpoints already started from it
            grow_cloud_init(config, encoder / "config.yaml", best_checkpoint(encoder), grown)
        extra += ["--init_param", str(grown), f"{best_checkpoint(bootstrap)}:decoder:decoder"]
    elif role == "device":
        encoder = best_checkpoint(opts.model_exp("device_ctc"))
        cloud = best_checkpoint(opts.model_exp("cloud"))
        init = [f"{encoder}:encoder:encoder", f"{encoder}:ctc:ctc", f"{cloud}:decoder:decoder"]
        extra += ["--init_param", *init, "--freeze_param", "decoder"]
    cmd = [
        "--config",
        str(config),
        *_data_args(opts, shapes=True),
        "--normalize",
        "global_mvn",
        "--normalize_conf",
        f"stats_file={opts.stats_file}",
        "--output_dir",
        str(out),
        "--resume",
        "true",
        "--use_tensorboard",
        "false",  # neither tensorboard nor matplotlib is a pasu dependency;
        "--use_matplotlib",
        "false",  # train.log has the same numbers
        *extra,
        *opts.extra_args,
    ]
    cmd += ["--max_epoch", str(epochs)]
    _run_espnet(cmd, out / "train.log", opts)
    best_checkpoint(out)  # fail here, not later, if ESPnet left no usable weights
    # More epochs later (--max-epoch) resume training instead of skipping it.
    done.write_text(f"max_epoch={epochs} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")


def stage_branches(opts: RecipeOptions) -> None:
    """Measure the bootstrap Branchformer's attention-branch weight per layer."""
    out = opts.model_exp("bootstrap") / "branch_weights.json"
    if out.is_file():
        log.info("branches: %s exists, skipping", out)
        return
    from pasu.tools.train.branches import measure_branch_weights

    weights = measure_branch_weights(
        _exp_model_dir(opts, "bootstrap"),
        opts.data_dir / opts.valid_set,
        limit=opts.branch_utterances,
    )
    out.write_text(json.dumps({"attention_weight": weights}, indent=2) + "\n")
    log.info("bootstrap attention-branch weight per layer: %s", ", ".join(f"{w:.2f}" for w in weights))


def stage_package(opts: RecipeOptions) -> None:
    """``<exp>/models/{cloud,device}``: self-contained ESPnet model dirs with a model card."""
    import torch

    from pasu.tools.train.package import PackageInfo, package_model

    cloud_dir = opts.models_dir / "cloud"
    for role in ("cloud", "device"):
        out = opts.models_dir / role
        if (out / "model_card.md").is_file():
            log.info("package: %s exists, skipping", out)
            continue
        if opts.init_models is not None and role not in opts.stages:
            carry_over(opts.init_model(role), out, cloud_dir)
            continue
        exp = opts.model_exp(role)
        info = PackageInfo(
            name=f"pasu-{role}",
            role=role,
            version=opts.version,
            data_dir=opts.data_dir,
            notes=_package_notes(opts, role),
        )
        package_model(
            exp_dir=exp,
            checkpoint=best_checkpoint(exp),
            token_dir=opts.token_dir,
            stats_file=opts.stats_file,
            out_dir=out,
            info=info,
            shared_decoder_from=cloud_dir / "model.pth" if role == "device" else None,
            weights_dtype=getattr(torch, opts.weights_dtype),
        )


def carry_over(package: Path, out: Path, cloud_dir: Path) -> None:
    """A role ``--init-from`` gave and this run did not train (``--stages`` without
    it): its package as it is — it still fits the new cloud, whose decoder was
    frozen, and a device is proven to carry that decoder."""
    from pasu.models import load_state_dict
    from pasu.tools.train.package import shared_decoder

    if out.name == "device":
        shared_decoder(load_state_dict(package / "model.pth"), load_state_dict(cloud_dir / "model.pth"))
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(package, out)
    log.info("package: %s carried over from %s (not trained in this run)", out, package)


def stage_eval(opts: RecipeOptions) -> None:
    """Intent accuracy and WER of both packages on the test sets (``eval_<set>.json``)."""
    from pasu.decoding import DecodingOptions
    from pasu.tools.train.evaluate import evaluate
    from pasu.tools.train.package import save_card_row

    for role in ("cloud", "device"):
        model_dir = opts.models_dir / role
        for test in opts.test_sets:
            if (model_dir / f"eval_{test}.json").is_file() or not (opts.data_dir / test / "text").is_file():
                continue
            result = evaluate(
                model_dir,
                opts.data_dir / test,
                limit=opts.eval_limit,
                options=DecodingOptions(beam_size=opts.eval_beam_size),
            )
            save_card_row(model_dir, test, result.summary())
            log.info("eval %s on %s: %s", role, test, result.summary())


def run_recipe(opts: RecipeOptions) -> Path:
    """Run the selected stages in order; returns the packaged models' directory."""
    unknown = set(opts.stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
    if opts.retrain_decoder and opts.init_models is None:
        raise ValueError("retrain_decoder continues a trained pair: it needs init_models (--init-from)")
    if opts.retrain_decoder and "cloud" in opts.stages and "device" not in opts.stages:
        raise ValueError(
            "a retrained decoder no longer fits the pair's device: add device to the stages so it adapts to the new one"
        )
    for split in (opts.train_set, opts.valid_set):
        if not (opts.data_dir / split / "wav.scp").is_file():
            raise FileNotFoundError(
                f"{opts.data_dir / split}/wav.scp not found; run `pasu data synth --out {opts.data_dir}`"
            )
    if opts.num_threads:  # the in-process stages (branch weights, eval) too
        import torch

        torch.set_num_threads(opts.num_threads)
    timer = StageTimer(opts.exp_dir / "timings.json")
    actions: dict[str, Callable[[RecipeOptions], None]] = {
        "tokens": stage_tokens,
        "stats": stage_stats,
        "bootstrap": lambda o: stage_train(o, "bootstrap"),
        "branches": stage_branches,
        "device_ctc": lambda o: stage_train(o, "device_ctc"),
        "cloud": lambda o: stage_train(o, "cloud"),
        "device": lambda o: stage_train(o, "device"),
        "package": stage_package,
        "eval": stage_eval,
    }
    opts.exp_dir.mkdir(parents=True, exist_ok=True)
    (opts.exp_dir / "recipe_options.json").write_text(json.dumps(asdict(opts), indent=2, default=str) + "\n")
    stages = [s for s in STAGES if s in opts.stages]
    if opts.init_models is not None:
        skipped = [s for s in stages if s in FINETUNE_SKIPS]
        if skipped:
            log.info("fine-tuning %s: stages %s are not needed", opts.init_models, ",".join(skipped))
        stages = [s for s in stages if s not in FINETUNE_SKIPS]
    # a retrained decoder is the cloud's to finish before the device can adapt to it
    side_by_side = opts.init_models is not None and not opts.retrain_decoder and {"cloud", "device"} <= set(stages)
    for stage in stages:
        if side_by_side and stage == "device":  # ran beside the cloud
            continue
        log.info("stage %s: start", stage)
        t0, c0 = time.monotonic(), _cpu_seconds()
        if side_by_side and stage == "cloud":
            # independent (each starts from its own weights; the decoder is frozen on
            # both), so one core each instead of one after the other
            _in_parallel([lambda: stage_train(opts, "cloud"), lambda: stage_train(opts, "device")])
            done: tuple[str, ...] = ("cloud", "device")
        else:
            actions[stage](opts)
            done = (stage,)
        dt, cpu = time.monotonic() - t0, _cpu_seconds() - c0
        for role in done:  # side by side: each took the wall time; the CPU time is shared
            timer.record(role, dt, cpu / len(done))
        log.info("stage %s: done in %.1f s (%.1f CPU s)", stage, dt, cpu)
    return opts.models_dir


# ------------------------------------------------------------------- helpers


def _in_parallel(jobs: Sequence[Callable[[], None]]) -> None:
    """Run jobs in threads (each drives an ESPnet subprocess); re-raise the first error."""
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # noqa: BLE001  (handed to the caller below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# What a fine-tuned model takes from the model it continues: everything that makes
# its weights fit (architecture, features, the loss it was trained with).
_ARCHITECTURE_KEYS = (
    "frontend",
    "frontend_conf",
    "normalize",
    "specaug",
    "specaug_conf",
    "preencoder",
    "preencoder_conf",
    "encoder",
    "encoder_conf",
    "postencoder",
    "postencoder_conf",
    "decoder",
    "decoder_conf",
    "ctc_conf",
    "model",
    "model_conf",
)


def write_finetune_config(base: Path, init_config: Path, path: Path) -> dict[str, Any]:
    """A training config that continues ``init_config``'s model: the recipe's
    training settings (batches, optimiser, schedule) from ``base``, the
    architecture from the model itself, so ``--init_param`` fits exactly."""
    config = yaml.safe_load(base.read_text())
    init = yaml.safe_load(init_config.read_text())
    for key in _ARCHITECTURE_KEYS:
        if key in init:
            config[key] = init[key]
        else:
            config.pop(key, None)
    # a warm start: half the from-scratch peak and a short warm-up (as v2 did)
    config["optim_conf"] = {**config.get("optim_conf", {}), "lr": 0.001}
    config["scheduler_conf"] = {**config.get("scheduler_conf", {}), "warmup_steps": 500}
    header = (
        f"# Generated by pasu.tools.train.recipe: training settings from {base.name}, the "
        f"architecture of {init_config}.\n"
    )
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return config


def choose_attention_blocks(
    weights: Sequence[float],
    threshold: float = ATTENTION_WEIGHT_THRESHOLD,
    max_fraction: float = MAX_ATTENTION_FRACTION,
) -> int:
    """How many top blocks keep self-attention, from per-layer attention-branch weights.

    The late-context encoder needs its attention blocks on top, contiguous: the
    lowest layer whose weight exceeds ``threshold`` and everything above it keep
    attention; the layers below become local (convolution-only) blocks. At least
    one block keeps attention (the intent needs utterance context), and at most
    ``max_fraction`` of them: a small model trained for a few epochs can leave
    every layer's weight near the untrained 0.5, and an all-attention device
    encoder would lose the incremental computation that is its reason to exist
    (``late_base.yaml`` keeps the same 1:1 local/attention ratio).
    """
    above = [i for i, w in enumerate(weights) if w > threshold]
    first = above[0] if above else len(weights) - 1
    cap = max(1, int(len(weights) * max_fraction))
    return min(cap, max(1, len(weights) - first))


def write_device_config(opts: RecipeOptions, path: Path) -> dict[str, Any]:
    """The device training config: its encoder, the shared decoder, the measured split."""
    device = yaml.safe_load(opts.device_config.read_text())
    bootstrap = yaml.safe_load(opts.bootstrap_config.read_text())
    # The shared decoder fixes the encoder width: cross-attention is output_size wide.
    device["decoder"] = bootstrap["decoder"]
    device["decoder_conf"] = bootstrap["decoder_conf"]
    enc = device["encoder_conf"]
    enc["output_size"] = bootstrap["encoder_conf"]["output_size"]
    total = int(bootstrap["encoder_conf"].get("num_blocks", enc["num_local_blocks"] + enc["num_attention_blocks"]))
    if opts.device_attention_blocks is not None:
        n_att, why = opts.device_attention_blocks, "set by --device-attention-blocks"
    else:
        bw = opts.model_exp("bootstrap") / "branch_weights.json"
        weights = json.loads(bw.read_text())["attention_weight"]
        n_att = choose_attention_blocks(weights)
        why = (
            f"bootstrap attention-branch weights {[round(w, 3) for w in weights]}: attention where > "
            f"{ATTENTION_WEIGHT_THRESHOLD}, in at most {MAX_ATTENTION_FRACTION:.0%} of the blocks"
        )
    n_att = min(max(1, n_att), total)
    enc["num_attention_blocks"] = n_att
    enc["num_local_blocks"] = total - n_att
    header = (
        f"# Generated by pasu.tools.train.recipe from {opts.device_config.name} and {opts.bootstrap_config.name}.\n"
        f"# {total - n_att} local + {n_att} attention blocks: {why}.\n"
    )
    path.write_text(header + yaml.safe_dump(device, sort_keys=False))
    log.info("device encoder: %d local + %d attention blocks (%s)", total - n_att, n_att, why)
    return device


def write_cloud_config(opts: RecipeOptions, path: Path) -> dict[str, Any]:
    """The cloud training config: its Conformer with the shared decoder's section."""
    cloud = yaml.safe_load(opts.cloud_config.read_text())
    bootstrap = yaml.safe_load(opts.bootstrap_config.read_text())
    width = bootstrap["encoder_conf"]["output_size"]
    if cloud["encoder_conf"]["output_size"] != width:
        raise ValueError(
            f"{opts.cloud_config.name}: output_size {cloud['encoder_conf']['output_size']} must "
            f"equal the shared decoder's width {width}"
        )
    cloud["decoder"] = bootstrap["decoder"]
    cloud["decoder_conf"] = bootstrap["decoder_conf"]
    header = (
        f"# Generated by pasu.tools.train.recipe from {opts.cloud_config.name} "
        f"(decoder section from {opts.bootstrap_config.name}).\n"
    )
    path.write_text(header + yaml.safe_dump(cloud, sort_keys=False))
    return cloud


def grow_cloud_init(cloud_config: Path, device_config: Path, device_ckpt: Path, out: Path) -> Path:
    """``--init_param`` file of the cloud Conformer, grown from the trained device encoder."""
    from pasu.tools.train.grow import write_conformer_init

    cloud = yaml.safe_load(cloud_config.read_text())["encoder_conf"]
    device = yaml.safe_load(device_config.read_text())["encoder_conf"]
    blocks = device["num_local_blocks"] + device["num_attention_blocks"]
    if cloud["num_blocks"] != blocks:
        raise ValueError(
            f"the cloud Conformer is grown from the device's {blocks} blocks; "
            f"{cloud_config} has num_blocks {cloud['num_blocks']}"
        )
    return write_conformer_init(
        device_ckpt,
        out,
        kernel=int(cloud["cnn_module_kernel"]),
        local_left_context=int(device["cnn_module_kernel"]) - 1 - int(device["local_right_context"]),
        attention_heads=int(cloud["attention_heads"]),
        linear_units=int(cloud["linear_units"]),
    )


def warm_start_params(opts: RecipeOptions, device_config: Path, source_ckpt: Path) -> list[str]:
    """ESPnet ``--init_param`` specs that start the device from the bootstrap's trained parts.

    The subsampling front end and the CTC head do the same job in both models (same
    features, same width, same tokens), so the device starts from the bootstrap's
    instead of from noise: its encoder then only has to learn the blocks in between,
    which cuts the device's training epochs on the 2-core budget. Skipped, with a log
    line, when the two configs' features or front ends differ (the shapes would not
    match). Unlike the decoder, both stay trainable.
    """
    device = yaml.safe_load(device_config.read_text())
    source = yaml.safe_load(opts.bootstrap_config.read_text())
    same = (
        device.get("frontend_conf") == source.get("frontend_conf")
        and device["encoder_conf"].get("input_layer", "conv2d") == source["encoder_conf"].get("input_layer", "conv2d")
        and device["encoder_conf"]["output_size"] == source["encoder_conf"]["output_size"]
    )
    if not same:
        log.info("device: front end differs from the bootstrap's; training it from scratch")
        return []
    return [f"{source_ckpt}:encoder.embed:encoder.embed", f"{source_ckpt}:ctc:ctc"]


def best_checkpoint(exp: Path) -> Path:
    """ESPnet's n-best average (``valid.acc.ave.pth``), else its single best."""
    for name in ("valid.acc.ave.pth", "valid.acc.best.pth", "valid.loss.ave.pth", "valid.loss.best.pth"):
        if (exp / name).exists():
            return exp / name
    raise FileNotFoundError(f"no averaged/best checkpoint in {exp}; did training finish?")


def _exp_model_dir(opts: RecipeOptions, role: str) -> Path:
    """A loadable view of an experiment dir (config.yaml + best weights) for analysis."""
    exp = opts.model_exp(role)
    view = exp / "best_model"
    view.mkdir(exist_ok=True)
    for name, src in (("config.yaml", exp / "config.yaml"), ("model.pth", best_checkpoint(exp))):
        dst = view / name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src.resolve())
    return view


def _package_notes(opts: RecipeOptions, role: str) -> dict[str, Any]:
    notes: dict[str, Any] = {}
    if opts.init_models is not None:
        init = yaml.safe_load((opts.init_model(role) / "config.yaml").read_text()).get("pasu", {})
        if "bootstrap_attention_branch_weights" in init:
            notes["bootstrap_attention_branch_weights"] = init["bootstrap_attention_branch_weights"]
        notes["history"] = [
            *init.get("history", []),
            (
                f"v{opts.version}: continued from {init.get('name', role)} version {init.get('version', '?')} "
                f"for {opts.epochs(role)} epochs on {opts.data_dir}, "
                + ("the shared decoder retrained by the cloud" if opts.retrain_decoder else "the shared decoder frozen")
                + " (pasu train --init-from"
                + (" --retrain-decoder" if opts.retrain_decoder else "")
                + "".join(f" {a}" for a in opts.extra_args)
                + ")."
            ),
        ]
    timings = opts.exp_dir / "timings.json"
    if timings.is_file():
        t = json.loads(timings.read_text())
        if role in t:
            notes["training_wall_s"] = t[role]
            notes["training_cpu_s"] = t.get(f"{role}_cpu")
    if role == "device":
        bw = opts.model_exp("bootstrap") / "branch_weights.json"
        if bw.is_file():
            notes["bootstrap_attention_branch_weights"] = json.loads(bw.read_text())["attention_weight"]
    return notes


def _data_args(opts: RecipeOptions, shapes: bool) -> list[str]:
    tr, va = opts.data_dir / opts.train_set, opts.data_dir / opts.valid_set
    args = [
        "--use_preprocessor",
        "true",
        "--token_type",
        "bpe",
        "--bpemodel",
        str(opts.token_dir / "bpe.model"),
        "--token_list",
        str(opts.token_dir / "tokens.txt"),
        "--train_data_path_and_name_and_type",
        f"{tr / 'wav.scp'},speech,sound",
        "--train_data_path_and_name_and_type",
        f"{tr / 'text'},text,text",
        "--valid_data_path_and_name_and_type",
        f"{va / 'wav.scp'},speech,sound",
        "--valid_data_path_and_name_and_type",
        f"{va / 'text'},text,text",
        "--ngpu",
        "0",
        "--num_workers",
        str(opts.num_workers),
        "--seed",
        str(opts.seed),
    ]
    if shapes:
        s = opts.stats_dir
        args += [
            "--train_shape_file",
            str(s / "train" / "speech_shape"),
            "--train_shape_file",
            str(s / "train" / "text_shape.bpe"),
            "--valid_shape_file",
            str(s / "valid" / "speech_shape"),
            "--valid_shape_file",
            str(s / "valid" / "text_shape.bpe"),
        ]
    else:  # collect_stats reads the utterance ids from the "shape" (key) files
        args += [
            "--train_shape_file",
            str(tr / "wav.scp"),
            "--valid_shape_file",
            str(va / "wav.scp"),
        ]
    return args


_PROGRESS = re.compile(r"(\d+epoch results:.*|\d+epoch:.*iter.*|Error.*|Traceback.*)")


def _run_espnet(cmd: list[str], log_file: Path, opts: RecipeOptions) -> None:
    """``python -m pasu.tools.train.asr_train CMD`` with its log in ``log_file``.

    A subprocess (as asr.sh runs it) keeps ESPnet's logging setup and any crash
    out of this process; its progress lines are relayed to our logger.
    """
    full = [sys.executable, "-m", "pasu.tools.train.asr_train", *cmd]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("running ESPnet (log: %s): %s", log_file, " ".join(full[1:]))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine
    # spinning burns the neighbours' CPU (and inflates our CPU-time figures).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if opts.num_threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(opts.num_threads)
    with open(log_file, "a", encoding="utf-8") as fh:
        fh.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(full)}\n")
        fh.flush()
        proc = subprocess.Popen(full, stdout=fh, stderr=subprocess.STDOUT, env=env)
    pos = log_file.stat().st_size
    try:
        while proc.poll() is None:
            time.sleep(5)
            pos = _relay_progress(log_file, pos)
    except BaseException:
        proc.terminate()  # our own child only; ESPnet checkpoints each epoch
        proc.wait()
        raise
    _relay_progress(log_file, pos)
    if proc.returncode != 0:
        tail = "".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines(True)[-20:])
        raise RuntimeError(f"ESPnet exited with {proc.returncode}; see {log_file}:\n{tail}")


def _relay_progress(log_file: Path, pos: int) -> int:
    with open(log_file, encoding="utf-8", errors="replace") as fh:
        fh.seek(pos)
        chunk = fh.read()
        pos = fh.tell()
    for line in chunk.splitlines():
        m = _PROGRESS.search(line)
        if m:
            log.info("espnet: %s", m.group(1)[:300])
    return pos


def _done_epochs(done: Path) -> int:
    m = re.match(r"max_epoch=(\d+)", done.read_text())
    return int(m.group(1)) if m else 0


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def _read_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
