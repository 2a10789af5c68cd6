"""Argument groups several subcommands share, mapped onto the typed options."""

from __future__ import annotations

import argparse

from pasu.cli import flag_values
from pasu.decoding.options import DecodingOptions


def add_model_args(p: argparse.ArgumentParser, role: str = "device") -> None:
    p.add_argument(
        "--model",
        default=None,
        help=f"ESPnet model directory, config.yaml or *.pth; 'tiny[:branchformer]' for a tiny "
        f"untrained model (default: the shipped {role} model)",
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, mps (default: cpu)")


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    d = DecodingOptions()
    g = p.add_argument_group("decoding")
    g.add_argument("--beam-size", type=int, default=d.beam_size)
    g.add_argument("--ctc-weight", type=float, default=d.ctc_weight)
    g.add_argument("--penalty", type=float, default=d.penalty)
    g.add_argument("--maxlenratio", type=float, default=d.maxlenratio)
    g.add_argument("--minlenratio", type=float, default=d.minlenratio)
    g.add_argument("--nbest", type=int, default=d.nbest)
    g.add_argument("--ctc-recursion", choices=("scan", "loop"), default=d.ctc_recursion)
    g.add_argument(
        "--lm-weight",
        type=float,
        default=d.lm_weight,
        help="shallow fusion with the language model that comes with the model (ESPnet's lm_weight; "
        "default: %(default)s, no LM)",
    )


def decoding_options(args: argparse.Namespace) -> DecodingOptions:
    return DecodingOptions(
        **flag_values(args, "beam_size ctc_weight penalty maxlenratio minlenratio nbest ctc_recursion lm_weight")
    )


def expand_audio_args(items: list[str]) -> list[str]:
    """Audio files given directly, or via a list file (one path per line) or an ESPnet wav.scp."""
    from pathlib import Path

    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.suffix in (".txt", ".lst", ".list", ".scp") or p.name == "wav.scp":
            for line in p.read_text().splitlines():
                parts = line.split()
                if not parts:
                    continue
                path = parts[-1] if len(parts) > 1 else parts[0]
                q = Path(path)
                out.append(str(q if q.is_absolute() or q.exists() else p.parent / q))
        else:
            out.append(item)
    return out


def parse_settings(options_type: type, settings: list[str]) -> dict[str, object]:
    """``["field=value", ...]`` -> keyword arguments for the dataclass ``options_type``, typed by its defaults."""
    import dataclasses

    defaults = {f.name: getattr(options_type(), f.name) for f in dataclasses.fields(options_type)}
    out: dict[str, object] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or key not in defaults:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"--set {item!r}: {key} takes true or false")
            out[key] = raw.lower() in ("true", "1")
        else:
            try:
                out[key] = kind(raw)
            except ValueError:
                raise SystemExit(f"--set {item!r}: {key} takes a {kind.__name__}") from None
    return out
