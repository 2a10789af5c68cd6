"""Load ESPnet2 ASR/SLU models as ESPnet saves them — without executing pickles.

A model is a ``config.yaml`` (the training arguments) and a ``*.pth`` state
dict, plus whatever files the config names (token list, BPE model, feature
statistics). ESPnet writes those paths relative to the directory training ran
in, and a model-zoo archive unpacks them under ``exp/`` and ``data/``; so every
path in the config is resolved against the working directory, the model
directory and its parents before we give up and name the missing file.
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import yaml

from pasu.digest import file_sha256
from pasu.digest import token_list_id as token_list_id  # re-exported: its home is pasu.digest (torch-free)
from pasu.locks import forward_lock as forward_lock  # re-exported: its home is pasu.locks

if TYPE_CHECKING:
    from espnet2.asr.espnet_model import ESPnetASRModel

log = logging.getLogger(__name__)

# Names ESPnet gives averaged/best checkpoints, most preferred first.
_WEIGHT_NAMES = (
    "model.pth",
    "valid.acc.ave.pth",
    "valid.acc.best.pth",
    "valid.loss.ave.pth",
    "valid.loss.best.pth",
)
# Config entries that hold a path, as (key, sub-key or None).
_PATH_KEYS = (
    ("bpemodel", None),
    ("token_list", None),
    ("normalize_conf", "stats_file"),
    ("non_linguistic_symbols", None),
)


class ModelLoadError(RuntimeError):
    """A model directory or file is missing, malformed or does not match."""


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are: its config and its weights."""

    config: Path
    weights: Path

    @property
    def root(self) -> Path:
        return self.config.parent


def find_model_files(path: str | Path, weights: str | Path | None = None) -> ModelFiles:
    """Locate ``config.yaml`` and the weights for a model path.

    ``path`` may be a model directory (``config.yaml`` + ``*.pth``), an unpacked
    model-zoo directory (``exp/<name>/config.yaml``), a ``config.yaml`` or a
    ``*.pth`` with its ``config.yaml`` beside it.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model path does not exist: {p}")
    if p.is_file() and p.suffix == ".pth":
        config = p.parent / "config.yaml"
        weights = weights or p
    elif p.is_file():
        config = p
    else:
        packed = None if (p / "config.yaml").is_file() else _packed_asr_files(p)
        if packed is not None:  # an ESPnet pack (meta.yaml), which may also hold an LM under exp/
            config, weights = packed[0], weights or packed[1]
        else:
            found = [*sorted(p.glob("exp/*/config.yaml")), *sorted(p.glob("exp/**/config.yaml"))]
            candidates = [p / "config.yaml", *found]
            config = next((c for c in candidates if c.is_file()), p / "config.yaml")
    if not config.is_file():
        raise ModelLoadError(f"model config not found: {config}")
    if weights is None:
        weights = _pick_weights(config.parent)
    weights = Path(weights)
    if not weights.is_file():
        raise ModelLoadError(f"model weights not found: {weights}")
    return ModelFiles(config=config.resolve(), weights=weights.resolve())


def _packed_asr_files(directory: Path) -> tuple[Path, Path | None] | None:
    """The ASR config and weights an ESPnet ``meta.yaml`` (``espnet2.bin.pack``) names, if any."""
    meta_path = directory / "meta.yaml"
    if not meta_path.is_file():
        return None
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ModelLoadError(f"malformed YAML in {meta_path}: {e}") from e
    config = (meta.get("yaml_files") or {}).get("asr_train_config") if isinstance(meta, dict) else None
    if not config:
        return None
    weights = (meta.get("files") or {}).get("asr_model_file")
    return directory / str(config), (directory / str(weights)) if weights else None


def _pick_weights(directory: Path) -> Path:
    for name in _WEIGHT_NAMES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(directory.glob("*.pth"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelLoadError(f"no *.pth weights in {directory}")
    raise ModelLoadError(f"several *.pth in {directory} ({', '.join(f.name for f in found)}); name one explicitly")


def _resolve(value: str, root: Path) -> str:
    """Find a config-relative path the way a person would: cwd, then the model dir up."""
    p = Path(value)
    if p.is_absolute():
        if p.exists():
            return str(p)
        candidates = []
    else:
        candidates = [Path.cwd() / p] + [d / p for d in (root, *root.parents)]
    # A zoo archive may flatten a deep training path: fall back to the basename.
    candidates += [root / p.name]
    for c in candidates:
        if c.exists():
            return str(c.resolve())
    raise ModelLoadError(f"file named in {root / 'config.yaml'} not found: {value}")


def resolve_config(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """Return a copy of a training config with every file path made absolute."""
    cfg = copy.deepcopy(config)
    for key, sub in _PATH_KEYS:
        holder = cfg.get(key) if sub else cfg
        name = sub or key
        if isinstance(holder, dict) and isinstance(holder.get(name), str):
            holder[name] = _resolve(holder[name], root)
    return cfg


def _task_for(config: dict[str, Any]):
    """ESPnet's SLU task adds deliberation/post-decoder keys; everything else is ASR."""
    if any(k in config for k in ("postdecoder", "deliberationencoder")):
        from espnet2.tasks.slu import SLUTask

        return SLUTask
    from espnet2.tasks.asr import ASRTask

    return ASRTask


def load_state_dict(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """``torch.load`` with ``weights_only=True``: a poisoned checkpoint is refused, never run."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ...
        raise ModelLoadError(f"cannot load weights from {path}: {e}") from e
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} does not hold a state dict")
    for wrapper in ("module", "state_dict", "model"):  # deepspeed / lightning / misc
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    return state


@dataclass
class LoadedLM:
    """An ESPnet language model (``LMTask``) for shallow fusion in the search."""

    lm: torch.nn.Module  # ESPnetLanguageModel.lm: what ESPnet's Speech2Text scores with
    config: dict[str, Any]
    files: ModelFiles

    @property
    def kind(self) -> str:
        return str(self.config.get("lm", ""))


@dataclass
class LoadedModel:
    """An ESPnet model ready for inference, with what it needs to turn ids into text."""

    model: torch.nn.Module
    config: dict[str, Any]
    files: ModelFiles
    token_list: list[str]
    tokenizer: Any
    converter: Any
    device: torch.device
    name: str = ""
    version: str = ""
    lm: LoadedLM | None = None  # the language model that came with it, if any
    _resolved_config: Path | None = field(default=None, repr=False)

    @property
    def sos(self) -> int:
        return int(cast("ESPnetASRModel", self.model).sos)

    @property
    def eos(self) -> int:
        return int(cast("ESPnetASRModel", self.model).eos)

    @property
    def vocab_size(self) -> int:
        return len(self.token_list)

    @property
    def sample_rate(self) -> int:
        return int((self.config.get("frontend_conf") or {}).get("fs", 16000))

    def tokens(self, token_ids: list[int]) -> list[str]:
        return self.converter.ids2tokens([t for t in token_ids if t != 0])

    def text(self, token_ids: list[int]) -> str:
        tokens = self.tokens(token_ids)
        return self.tokenizer.tokens2text(tokens) if self.tokenizer is not None else " ".join(tokens)

    def weights_digest(self) -> str:
        """SHA-256 of the weights file: what a cache of this model's answers is keyed on."""
        return file_sha256(self.files.weights)

    def resolved_config_path(self) -> Path:
        """A copy of config.yaml with absolute paths, for ESPnet's own loaders."""
        if self._resolved_config is None:
            tmp = Path(tempfile.mkdtemp(prefix="pasu-model-")) / "config.yaml"
            tmp.write_text(yaml.safe_dump(self.config, sort_keys=False))
            self._resolved_config = tmp
        return self._resolved_config


def find_lm_files(files: ModelFiles, config: dict[str, Any]) -> ModelFiles | None:
    """The language model that comes with a model, named as ESPnet names it, or None.

    In order: ``lm_train_config``/``lm_file`` keys in the model's config (top
    level or under ``pasu``); the same keys in an ESPnet ``meta.yaml``
    (``espnet2.bin.pack``: ``yaml_files``/``files``) in the model directory or
    up to two levels above it (a model-zoo archive); an ``lm/`` directory beside
    the model that is itself an ESPnet LM experiment directory (``config.yaml`` +
    ``*.pth``). A key without ``lm_file`` takes the weights beside the LM config.
    A ``meta.yaml`` that names another ASR config is not this model's.
    """
    root = files.root
    for holder in (config, config.get("pasu") or {}):
        if holder.get("lm_train_config"):
            lm_config = Path(_resolve(str(holder["lm_train_config"]), root))
            lm_file = holder.get("lm_file")
            weights = Path(_resolve(str(lm_file), root)) if lm_file else _pick_weights(lm_config.parent)
            return ModelFiles(config=lm_config, weights=weights)
    for d in (root, *list(root.parents)[:2]):
        meta_path = d / "meta.yaml"
        if not meta_path.is_file():
            continue
        try:
            meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ModelLoadError(f"malformed YAML in {meta_path}: {e}") from e
        asr_config = (meta.get("yaml_files") or {}).get("asr_train_config")
        if asr_config and (d / str(asr_config)).resolve() != files.config:
            continue
        lm_config = (meta.get("yaml_files") or {}).get("lm_train_config")
        lm_file = (meta.get("files") or {}).get("lm_file")
        if lm_config:
            c = Path(_resolve(str(lm_config), d))
            return ModelFiles(config=c, weights=Path(_resolve(str(lm_file), d)) if lm_file else _pick_weights(c.parent))
    if (root / "lm" / "config.yaml").is_file():
        return find_model_files(root / "lm")
    return None


def load_lm(
    lm_train_config: str | Path,
    lm_file: str | Path | None = None,
    device: str | torch.device = "cpu",
    token_list: list[str] | None = None,
) -> LoadedLM:
    """Build an ESPnet ``LMTask`` language model from its config and load its weights safely.

    With ``token_list`` (the ASR model's), an LM over other token ids is refused:
    its scores would be for the wrong tokens.
    """
    from espnet2.tasks.lm import LMTask

    files = find_model_files(lm_train_config, lm_file)
    try:
        raw = yaml.safe_load(files.config.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ModelLoadError(f"malformed YAML in {files.config}: {e}") from e
    if not isinstance(raw, dict) or "lm" not in raw or "token_list" not in raw:
        raise ModelLoadError(f"{files.config} is not an ESPnet LM training config (needs 'lm' and 'token_list')")
    # only the token list matters to scoring: a BPE model or symbol list that did not travel is no error
    unused = {k: raw.pop(k) for k in ("bpemodel", "non_linguistic_symbols") if k in raw}
    config = {**resolve_config(raw, files.root), **unused}
    args = argparse.Namespace(**{"model": "lm", "model_conf": {}, "lm_conf": {}, **copy.deepcopy(config)})
    args.init = None
    try:
        model = LMTask.build_model(args)
    except Exception as e:
        raise ModelLoadError(f"cannot build the language model described by {files.config}: {e}") from e
    result = model.load_state_dict(load_state_dict(files.weights, "cpu"), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{files.weights} does not match {files.config}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    config["token_list"] = list(args.token_list)
    if token_list is not None and list(args.token_list) != list(token_list):
        raise ModelLoadError(
            f"the language model {files.config} has other tokens than the ASR model "
            f"({len(args.token_list)} vs {len(token_list)} tokens, or another order); "
            "train it on the ASR model's token list"
        )
    model.to(torch.device(device)).eval()
    return LoadedLM(lm=cast(Any, model).lm, config=config, files=files)


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    weights: str | Path | None = None,
    *,
    lm_train_config: str | Path | None = None,
    lm_file: str | Path | None = None,
    with_lm: bool = True,
) -> LoadedModel:
    """Build an ESPnet2 ASR/SLU model from its config and load its weights safely.

    Its language model is loaded too: the one named by ``lm_train_config``/``lm_file``,
    else the one that comes with the model (:func:`find_lm_files`); ``with_lm=False``
    skips it. Loading an LM changes nothing until a search gives it a weight.
    """
    from espnet2.text.build_tokenizer import build_tokenizer
    from espnet2.text.token_id_converter import TokenIDConverter

    # Encoders pasu adds (late contextualization) register with ESPnet on import.
    try:
        import pasu.encoders  # noqa: F401
    except ImportError:  # pragma: no cover - the encoders package is optional
        pass

    files = find_model_files(path, weights)
    try:
        raw = yaml.safe_load(files.config.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ModelLoadError(f"malformed YAML in {files.config}: {e}") from e
    if not isinstance(raw, dict) or "token_list" not in raw:
        raise ModelLoadError(f"{files.config} is not an ESPnet training config (no token_list)")
    config = resolve_config(raw, files.root)
    args = argparse.Namespace(**copy.deepcopy(config))
    args.init = None  # the checkpoint overwrites every parameter anyway
    task = _task_for(config)
    try:
        model = task.build_model(args)
    except Exception as e:
        raise ModelLoadError(f"cannot build the model described by {files.config}: {e}") from e

    state = load_state_dict(files.weights, "cpu")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{files.weights} does not match {files.config}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    device = torch.device(device)
    model.to(device).eval()

    token_list = list(args.token_list)
    config["token_list"] = token_list
    token_type = config.get("token_type")
    bpemodel = config.get("bpemodel")
    if token_type is None:
        tokenizer = None
    elif token_type == "bpe":
        tokenizer = build_tokenizer(token_type=token_type, bpemodel=bpemodel) if bpemodel else None
    else:
        tokenizer = build_tokenizer(token_type=token_type)
    meta = config.get("pasu") or {}
    lm = None
    if with_lm:
        if lm_train_config is not None:
            lm = load_lm(lm_train_config, lm_file, device, token_list)
        elif (lm_files := find_lm_files(files, config)) is not None:
            lm = load_lm(lm_files.config, lm_files.weights, device, token_list)
        if lm is not None:
            log.info("language model %s (%s) loaded with %s", lm.files.config, lm.kind, files.root)
    return LoadedModel(
        model=model,
        config=config,
        files=files,
        token_list=token_list,
        tokenizer=tokenizer,
        converter=TokenIDConverter(token_list=token_list),
        device=device,
        name=str(meta.get("name", files.root.name)),
        version=str(meta.get("version", "0")),
        lm=lm,
    )
