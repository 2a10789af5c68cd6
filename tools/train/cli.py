"""`pasu train` (the recipe), `pasu eval` (score a model dir) and `pasu compare` (two models'
hypotheses): thin layers over pasu.tools.train."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pasu.cli import flag_values

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from pasu.decoding import DecodingOptions
    from pasu.tools.train.recipe import STAGES, RecipeOptions

    d = RecipeOptions()
    p = subparsers.add_parser(
        "train",
        help="train the device/cloud model pair with ESPnet (resumable recipe)",
        description="Train pasu's model pair with ESPnet's trainer on a `pasu data synth` corpus: "
        "a bootstrap Branchformer (front end, a grammar-aware decoder, where attention matters), "
        "the device encoder with CTC, the cloud (a Conformer grown from that encoder; it trains "
        "the decoder), and the device again on the cloud's decoder, frozen, so both carry the "
        "same one; then package and evaluate the pair. "
        "Rerun the same command to resume.",
    )
    p.add_argument("--data", type=Path, default=d.data_dir, help="corpus dir (default: %(default)s)")
    p.add_argument("--exp", type=Path, default=d.exp_dir, help="experiment dir (default: %(default)s)")
    p.add_argument("--bootstrap-config", type=Path, default=d.bootstrap_config, help="bootstrap training YAML")
    p.add_argument("--cloud-config", type=Path, default=d.cloud_config, help="cloud training YAML")
    p.add_argument("--device-config", type=Path, default=d.device_config, help="device training YAML")
    p.add_argument("--tiny", action="store_true", help="use the tiny smoke-test configs (train_*_tiny.yaml)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run (default: %(default)s)")
    p.add_argument("--max-epoch", type=int, help="override max_epoch of every config")
    p.add_argument("--bpe-vocab", type=int, default=d.bpe_vocab_size, help="BPE vocabulary (default: %(default)s)")
    p.add_argument("--device-attention-blocks", type=int, help="device attention blocks (default: by branch weights)")
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="data loader workers (default: %(default)s)")
    p.add_argument(
        "--threads", type=int, default=d.num_threads, help="torch threads per ESPnet run, 0: torch's (%(default)s)"
    )
    p.add_argument("--eval-limit", type=int, help="utterances per test set in the eval stage (default: all)")
    p.add_argument("--eval-beam", type=int, default=d.eval_beam_size, help="beam size of the eval stage")
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="DIR",
        help="fine-tune a trained pair (DIR/cloud, DIR/device; e.g. shared/resources/models) "
        "on --data instead of training from scratch: its tokens and MVN statistics, "
        "no bootstrap stages, both models side by side with the shared decoder frozen",
    )
    p.add_argument(
        "--retrain-decoder",
        action="store_true",
        help="with --init-from: the cloud trains the shared decoder too, then the device "
        "adapts to it (frozen), one after the other — for a corpus with new text",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=d.finetune_epochs,
        help="epochs of each model with --init-from (default: %(default)s)",
    )
    p.add_argument(
        "--epochs",
        action="append",
        default=[],
        metavar="ROLE=N",
        type=_role_epochs,
        help="epochs of one training stage (bootstrap, device_ctc, cloud, device), over "
        "--max-epoch and --finetune-epochs (repeat; e.g. --epochs cloud=10 --epochs device=16)",
    )
    p.add_argument("--model-version", default=d.version, help="version written into the packages")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--weights-dtype",
        choices=("float32", "float16"),
        default=d.weights_dtype,
        help="how the packages store their weights; float16 halves them and they still load "
        "into float32 models, pasu's and ESPnet's (default: %(default)s)",
    )
    p.add_argument(
        "--espnet-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument passed to every asr_train run (repeat; e.g. --espnet-arg=--batch_bins=500000)",
    )
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval",
        help="intent accuracy and WER of a model dir on a data dir",
        description="Decode an ESPnet data dir (wav.scp + text) with pasu's Recognizer; print intent "
        "accuracy and WER as a table, then one JSON line.",
    )
    e.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model dir (config.yaml + model.pth); with --rejection the device model (default: the shipped one)",
    )
    e.add_argument(
        "--data",
        type=Path,
        action="append",
        default=[],
        help="data dir with wav.scp and text (with --rejection: in-domain commands; repeat)",
    )
    e.add_argument("--limit", type=int, help="first N utterances only")
    e.add_argument("--beam-size", type=int, default=10, help="beam size (default: %(default)s)")
    e.add_argument(
        "--ctc-weight", type=float, default=DecodingOptions().ctc_weight, help="CTC weight (default: %(default)s)"
    )
    e.add_argument(
        "--lm-weight",
        type=float,
        default=DecodingOptions().lm_weight,
        help="shallow fusion with the model's language model (ESPnet's lm_weight; default: %(default)s)",
    )
    e.add_argument("--batch-size", type=int, default=8, help="utterances per beam search (default: %(default)s)")
    e.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    e.add_argument("--hyps", type=Path, help="also write 'uttid hypothesis' lines here")
    e.add_argument(
        "--card-row",
        metavar="NAME",
        help="also save the figures as MODEL/eval_NAME.json and re-render the model card "
        "(its rows are those files; NAME because two sets can share a folder name)",
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = e.add_argument_group("rejection (false accepts and false rejects of the device agent, issue 28)")
    r.add_argument(
        "--rejection",
        action="store_true",
        help="run every clip through the device agent (VAD, pilots, the rejection rule): false "
        "rejects on --data, false accepts on --reject; a Markdown table, then one JSON line",
    )
    r.add_argument(
        "--reject",
        type=Path,
        action="append",
        default=[],
        help="data dir where nothing is a command (pasu data rejection: noise, ood; repeat)",
    )
    r.add_argument(
        "--mode",
        choices=("device", "hybrid", "both"),
        default="device",
        help="the device alone, device + cloud (a worker on 127.0.0.1, the default threshold "
        "policy), or both (default: %(default)s)",
    )
    r.add_argument("--cloud-model", default=None, help="cloud model (default: the shipped one)")
    r.add_argument(
        "--rejection-threshold",
        type=float,
        default=None,
        help="device threshold (default: the one calibrated for its estimator)",
    )
    r.add_argument(
        "--cloud-rejection-threshold",
        type=float,
        default=None,
        help="cloud threshold (default: the one calibrated beside the cloud model)",
    )
    r.add_argument(
        "--calibrate",
        action="store_true",
        help="instead: set both thresholds on --data (held-out in-domain commands) so that at most "
        "--target-false-reject of the right answers are rejected",
    )
    r.add_argument("--target-false-reject", type=float, default=0.02, help="(default: %(default)s)")
    r.add_argument(
        "--sides",
        default="device,cloud",
        help="with --calibrate: whose threshold to set, device and/or cloud (default: %(default)s)",
    )
    r.add_argument(
        "--save",
        action="store_true",
        help="with --calibrate: write the thresholds (estimator metadata, cloud rejection.json)",
    )
    r.add_argument("--json-out", type=Path, default=None, help="also write the figures here")
    r.add_argument("--records", type=Path, default=None, help="also write every clip's records here (JSON lines)")
    r.add_argument(
        "--from-records",
        type=Path,
        action="append",
        default=[],
        help="instead of running the agent: the device-alone figures from a --records file, judged "
        "with --rejection-threshold (default: the estimator's calibrated one); with --calibrate: "
        "the device threshold from such files of held-out commands, the lowest of its voice "
        "engine groups' (repeat)",
    )
    r.add_argument(
        "--sweep",
        default=None,
        help="with --from-records: the figures at each of these comma-separated device thresholds "
        "instead (the operating curve)",
    )
    r.add_argument(
        "--rejudge-audio",
        action="store_true",
        help="with --from-records: the VAD's verdicts on each segment's audio made anew from the "
        "--data/--reject dirs (records made before a change to those rules)",
    )
    e.set_defaults(func=run_eval)

    c = subparsers.add_parser(
        "compare",
        help="two models' hypotheses on one data dir: who is right where, per voice, sign test",
        description="Compare two `pasu eval --hyps` files on the data dir they decoded: the "
        "utterances only one model gets right (exact two-sided sign test) and intent accuracy per "
        "voice. Prints a Markdown summary, then one JSON line.",
    )
    c.add_argument("--data", type=Path, required=True, help="data dir with text (and utt2voice or utt2spk)")
    c.add_argument(
        "--hyps",
        action="append",
        required=True,
        metavar="NAME=FILE",
        type=_named_path,
        help="a model's hypotheses (give exactly two; e.g. --hyps cloud=c.txt --hyps device=d.txt)",
    )
    c.set_defaults(func=run_compare)


def _role_epochs(text: str) -> tuple[str, int]:
    from pasu.tools.train.recipe import ROLES

    role, _, n = text.partition("=")
    if role not in ROLES or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"expected ROLE=N with ROLE one of {', '.join(ROLES)}, got {text!r}")
    return role, int(n)


def run_train(args: argparse.Namespace) -> int:
    from pasu.tools.train.recipe import CONFIG_DIR, RecipeOptions, run_recipe

    bootstrap, cloud, device = args.bootstrap_config, args.cloud_config, args.device_config
    if args.tiny:
        bootstrap, cloud, device = (CONFIG_DIR / f"train_{role}_tiny.yaml" for role in ("bootstrap", "cloud", "device"))
    opts = RecipeOptions(
        data_dir=args.data,
        exp_dir=args.exp,
        bootstrap_config=bootstrap,
        cloud_config=cloud,
        device_config=device,
        bpe_vocab_size=args.bpe_vocab,
        num_threads=args.threads or None,
        init_models=args.init_from,
        role_epochs=dict(args.epochs),
        version=args.model_version,
        eval_beam_size=args.eval_beam,
        extra_args=tuple(args.espnet_arg),
        stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()),
        **flag_values(
            args,
            "max_epoch num_workers seed weights_dtype finetune_epochs retrain_decoder "
            "device_attention_blocks eval_limit",
        ),
    )
    models = run_recipe(opts)
    log.warning("models in %s", models)  # the one line a default (quiet) run shows
    return 0


def _named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    return name, Path(path)


def run_compare(args: argparse.Namespace) -> int:
    from pasu.tools.train.compare import compare

    result = compare(args.data, dict(args.hyps))
    print(result.table())
    print(json.dumps(result.summary()))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from pasu.decoding import DecodingOptions
    from pasu.tools.train.evaluate import evaluate

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.rejection:
        return run_rejection(args)
    if args.model is None or len(args.data) != 1:
        print("error: pasu eval needs --model and exactly one --data (or --rejection)", file=sys.stderr)
        return 2
    args.data = args.data[0]
    result = evaluate(
        args.model,
        args.data,
        limit=args.limit,
        options=DecodingOptions(beam_size=args.beam_size, ctc_weight=args.ctc_weight, lm_weight=args.lm_weight),
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    if args.hyps:
        args.hyps.write_text("".join(f"{u} {h}\n" for u, h in result.hyps.items()), encoding="utf-8")
    if args.card_row:
        from pasu.tools.train.package import save_card_row

        save_card_row(args.model, args.card_row, result.summary())
    print(result.table(str(args.model), str(args.data)))
    print(json.dumps(result.summary()))
    return 0


def _rejection_from_records(args: argparse.Namespace, model: str | None) -> dict | None:
    """`--from-records`: a recorded device-alone run judged at one threshold, or at each of
    ``--sweep``'s; None (after saying why) on a bad request."""
    from pasu.tools.train import rejection as R

    if len(args.from_records) != 1:
        print("error: figures come from one --from-records file", file=sys.stderr)
        return None
    if args.sweep is not None:
        try:
            thresholds = [float(t) for t in args.sweep.split(",") if t.strip()]
        except ValueError:
            thresholds = []
        if not thresholds:
            print(f"error: --sweep wants comma-separated thresholds, got {args.sweep!r}", file=sys.stderr)
            return None
        out = R.threshold_sweep(args.from_records[0], thresholds)
        print(R.sweep_table(out))
        return out
    t = args.rejection_threshold
    if t is None:
        from pasu.device.confidence import estimator_for
        from pasu.model_store import resolve_model

        t = estimator_for(resolve_model(model, "device")).rejection_threshold or 0.0
    dirs = [*args.data, *args.reject] if args.rejudge_audio else []
    out = R.figures_from_records(args.from_records[0], t, dirs)
    print(R.table(out))
    return out


def run_rejection(args: argparse.Namespace) -> int:
    """`pasu eval --rejection`: the figures of issue 28, or (``--calibrate``) the thresholds."""
    from tqdm import tqdm

    from pasu.tools.train import rejection as R

    def progress(items):
        return tqdm(items, unit="clip", file=sys.stderr, disable=args.no_progress or not sys.stderr.isatty())

    model = str(args.model) if args.model else None
    if args.sweep is not None and (not args.from_records or args.calibrate):
        print("error: --sweep judges a recorded run: give --from-records (without --calibrate)", file=sys.stderr)
        return 2
    if args.from_records and args.calibrate:
        cal = R.calibrate_by_group(args.from_records, args.target_false_reject)
        for g, c in cal["groups"].items():
            print(f"{g}: threshold {c['threshold']:.4f} over {c['right_answers']} right answers")
        c = cal["device"]
        print(f"device: threshold {c['threshold']:.4f} rejects {c['rejected']} of {c['right_answers']} right answers")
        if args.save:
            for path in R.save_thresholds(cal, model, args.cloud_model):
                print(f"saved {path}")
        out = cal
    elif args.from_records:
        out = _rejection_from_records(args, model)
        if out is None:
            return 2
    elif args.calibrate:
        sides = tuple(s.strip() for s in args.sides.split(",") if s.strip())
        cal = R.calibrate_on(
            args.data, args.target_false_reject, model, args.cloud_model, args.limit, progress, sides=sides
        )
        for side in sides:
            c = cal[side]
            print(
                f"{side}: threshold {c['threshold']:.4f} rejects {c['rejected']} of {c['right_answers']} right "
                f"answers ({100 * c['false_reject_rate']:.1f}%)"
            )
        if args.save:
            for path in R.save_thresholds(cal, model, args.cloud_model):
                print(f"saved {path}")
        out = cal
    else:
        run = R.RejectionRun(
            commands=tuple(args.data),
            rejects=tuple(args.reject),
            device_model=model,
            cloud_model=args.cloud_model,
            limit=args.limit,
            modes=("device", "hybrid") if args.mode == "both" else (args.mode,),
            rejection_threshold=args.rejection_threshold,
            cloud_rejection_threshold=args.cloud_rejection_threshold,
            records=args.records,
        )
        out = R.evaluate_rejection(run, progress)
        print(R.table(out))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0
