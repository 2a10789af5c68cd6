"""`pasu bench runtime`: the device model on torch and on onnxruntime (fp32, int8), side by side.

Every clip streams through one :class:`pasu.streaming.StreamingSession` per runtime, on
the latency benchmark's simulated clock (:mod:`pasu.tools.bench.latency`): chunk i
arrives at (i + 1) x chunk duration, compute is measured for real, a pipeline slower
than real time pays for its backlog. The clips are interleaved across runtimes, so
load drift on a shared machine hits each alike. Per runtime it reports:

* end-of-speech latency (the final search after the last chunk; every technique on),
  and the real-time factor of the work done while the audio arrived;
* intent accuracy (:mod:`pasu.tools.scoring`) with every technique on and off;
* exactness against torch: clips whose n-best token ids (5-best by default) are
  identical, and the largest score difference over those clips, with every technique
  off (:meth:`StreamingOptions.stock`) and on;
* peak RSS and cold start (process start to the first result), each runtime alone in
  a fresh interpreter (``python -m pasu.tools.bench.runtime RUNTIME DIR FILES…``);
* install size: the distributions the runtime's process imported plus everything they
  require, or a lite venv's site-packages (``--lite-venv``) for the onnx runtimes.

This module imports neither torch nor ESPnet at import time: the child that measures
an onnx runtime must not pull them in.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pasu.tools.bench.memory import peak_rss_mb, rss_mb

if TYPE_CHECKING:
    from pasu.decoding.backend import RecognizerBackend
    from pasu.decoding.options import DecodingOptions
    from pasu.streaming import StreamingOptions

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "onnx-int8")
#: the runtime every other is checked against for exactness
REFERENCE = "torch"
#: a child that has not finished by then is killed
CHILD_TIMEOUT_S = 1800


class RuntimeBenchError(ValueError):
    """Inputs the benchmark cannot compare: a wrong export, an unknown runtime."""


def key(runtime: str) -> str:
    """A runtime's suffix in the summary's keys (``onnx-int8`` -> ``onnx_int8``)."""
    return runtime.replace("-", "_")


@dataclass(frozen=True)
class RuntimeBenchOptions:
    """How to run the benchmark.

    Attributes:
        runtimes: which to compare; ``torch`` is the exactness reference.
        chunk_s: audio chunk duration of the simulated stream.
        clock: "cpu" counts compute as the calling thread's CPU time (robust on a shared
            machine; right with one thread), "wall" as elapsed time.
        threads: torch intra-op threads and onnxruntime intra-op threads per session.
        warmup: clips streamed once per runtime before measuring.
        exactness: also decode every clip with every technique off (``nbest_identical_off``),
            and on with ``exact_nbest`` hypotheses (``nbest_identical_on``), untimed.
        exact_nbest: n-best length of the exactness decodes (the timed ones use the
            decoding options' own, 1 by default).
        memory_clips: clips each child process decodes for its peak RSS (the longest ones).
        children: measure peak RSS and cold start in child processes.
        lite_venv: a venv with only ``pasu[lite]``: its site-packages is the onnx install
            size, and its interpreter runs the onnx children where it can import pasu.
    """

    runtimes: tuple[str, ...] = RUNTIMES
    chunk_s: float = 0.16
    clock: str = "cpu"
    threads: int = 1
    warmup: int = 1
    exactness: bool = True
    exact_nbest: int = 5
    memory_clips: int = 10
    children: bool = True
    lite_venv: Path | None = None

    def timer(self):
        return time.thread_time if self.clock == "cpu" else time.perf_counter


# -- runtimes ------------------------------------------------------------------------


def make_backend(
    runtime: str, path: str | Path, threads: int = 1, decoding: DecodingOptions | None = None
) -> RecognizerBackend:
    """A :class:`pasu.decoding.backend.RecognizerBackend` for ``runtime`` over ``path``
    (a model directory for torch, a ``pasu export`` directory for the onnx runtimes)."""
    from pasu.decoding.options import DecodingOptions

    decoding = decoding or DecodingOptions()
    if runtime == "torch":
        import torch

        from pasu.decoding.recognizer import Recognizer
        from pasu.models import load_model

        torch.set_num_threads(threads)
        return Recognizer(load_model(path), decoding)
    if runtime not in RUNTIMES:
        raise RuntimeBenchError(f"unknown runtime {runtime!r}; choose from {RUNTIMES}")
    from pasu.lite.model import LiteModel, LiteOptions
    from pasu.lite.recognizer import LiteRecognizer

    model = LiteModel(path, LiteOptions(threads=threads))
    if bool(model.manifest.get("int8")) != (runtime == "onnx-int8"):
        raise RuntimeBenchError(f"{path}: int8={model.manifest.get('int8')} is not an export for runtime {runtime}")
    return LiteRecognizer(model, decoding)


def check_same_model(backends: dict[str, Any]) -> None:
    """Every export was made from the torch runtime's weights (else exactness means nothing)."""
    if REFERENCE not in backends:
        return
    digest = backends[REFERENCE].model.weights_digest()
    for rt, b in backends.items():
        if rt != REFERENCE and b.model.manifest["model"]["weights_sha256"] != digest:
            raise RuntimeBenchError(f"the {rt} export ({b.model.root}) was not made from the torch model's weights")


def export_dirs(model_dir: Path, runtimes: tuple[str, ...], work: Path, given: dict[str, Path]) -> dict[str, Path]:
    """runtime -> the directory it loads: the model for torch, an export (given or made now) for onnx."""
    out: dict[str, Path] = {}
    for rt in runtimes:
        if rt == "torch":
            out[rt] = model_dir
        elif rt in given:
            out[rt] = given[rt]
        else:
            from pasu.tools.export import ExportOptions, export_model

            out[rt] = work / rt
            log.info("exporting %s to %s", model_dir, out[rt])
            export_model(model_dir, out[rt], ExportOptions(int8=rt == "onnx-int8", ort=False))
    return out


# -- one clip ----------------------------------------------------------------------


@dataclass
class ClipRun:
    """One clip through one runtime with one set of streaming options."""

    latency_s: float  # end of speech -> final result
    during_s: float  # compute while the audio arrived
    text: str
    nbest: list[list[int]]  # token ids of each entry
    scores: list[float]


def stream(
    backend: RecognizerBackend, options: StreamingOptions, audio: np.ndarray, chunk_s: float, clock=time.perf_counter
) -> ClipRun:
    """Stream ``audio`` through a session on the benchmarks' simulated clock
    (:func:`pasu.tools.bench.simulate.simulate_stream`)."""
    from pasu.tools.bench.simulate import simulate_stream

    run = simulate_stream(backend, options, audio, chunk_s, clock)
    result = run.result
    return ClipRun(
        latency_s=run.latency_s,
        during_s=run.during_s,
        text=result.best.text if result.best else "",
        nbest=[list(e.token_ids) for e in result.nbest],
        scores=[float(e.score) for e in result.nbest],
    )


# -- the in-process part -------------------------------------------------------------


@dataclass
class ClipRow:
    utt: str
    audio_s: float
    on: dict[str, ClipRun] = field(default_factory=dict)  # runtime -> every technique on (timed)
    exact_on: dict[str, ClipRun] = field(default_factory=dict)  # every technique on, exact_nbest
    off: dict[str, ClipRun] = field(default_factory=dict)  # every technique off, exact_nbest


def _p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def exactness(rows: list[ClipRow], runtime: str, which: str) -> tuple[int, float | None]:
    """(clips whose n-best token ids equal torch's, max |score difference| over those clips);
    ``which``: ``off`` or ``exact_on``."""
    same, diff = 0, None
    for r in rows:
        runs = getattr(r, which)
        if runtime not in runs or REFERENCE not in runs:
            continue
        a, b = runs[runtime], runs[REFERENCE]
        if a.nbest != b.nbest:
            continue
        same += 1
        d = max((abs(x - y) for x, y in zip(a.scores, b.scores, strict=True)), default=0.0)
        diff = d if diff is None else max(diff, d)
    return same, diff


@dataclass
class RuntimeBenchResult:
    rows: list[ClipRow]
    refs: dict[str, str | None]
    options: RuntimeBenchOptions
    children: dict[str, dict] = field(default_factory=dict)  # runtime -> child measurement
    install: dict[str, dict] = field(default_factory=dict)  # runtime -> install size

    def summary(self) -> dict[str, Any]:
        from pasu.tools.scoring import accuracy

        rows, o = self.rows, self.options
        refs = [self.refs.get(r.utt) for r in rows]
        audio = sum(r.audio_s for r in rows)
        out: dict[str, Any] = {"n_clips": len(rows), "clock": o.clock, "threads": o.threads}
        for rt in o.runtimes:
            k = key(rt)
            lat = [r.on[rt].latency_s for r in rows]
            out[f"latency_p50_s_{k}"] = _p(lat, 50)
            out[f"latency_p90_s_{k}"] = _p(lat, 90)
            out[f"rtf_during_{k}"] = round(sum(r.on[rt].during_s for r in rows) / audio, 4) if audio else None
            out[f"acc_{k}"] = _round(accuracy([r.on[rt].text for r in rows], refs)["intent_acc"])
            if o.exactness:
                out[f"acc_off_{k}"] = _round(accuracy([r.off[rt].text for r in rows], refs)["intent_acc"])
                out[f"latency_off_p50_s_{k}"] = _p([r.off[rt].latency_s for r in rows], 50)
            child = self.children.get(rt)
            if child:
                out[f"peak_rss_mb_{k}"] = child["peak_mb"]
                out[f"loaded_rss_mb_{k}"] = child["loaded_mb"]
                out[f"cold_start_s_{k}"] = child["cold_start_cpu_s" if o.clock == "cpu" else "cold_start_wall_s"]
                out[f"cold_start_wall_s_{k}"] = child["cold_start_wall_s"]
                out[f"torch_imported_{k}"] = child["torch_imported"]
            if rt in self.install:
                out[f"install_mb_{k}"] = self.install[rt]["install_mb"]
                out[f"model_mb_{k}"] = self.install[rt]["model_mb"]
        base = out.get(f"latency_p50_s_{key(REFERENCE)}")
        for rt in o.runtimes:
            if rt == REFERENCE or base is None:
                continue
            p50 = out[f"latency_p50_s_{key(rt)}"]
            out[f"speedup_p50_{key(rt)}"] = round(base / p50, 3) if p50 else None
            # the timed runs' answers: the best hypothesis as torch's
            out[f"best_identical_{key(rt)}"] = sum(r.on[rt].nbest[:1] == r.on[REFERENCE].nbest[:1] for r in rows)
            if not o.exactness:
                continue
            for which, name in (("off", "off"), ("exact_on", "on")):
                same, diff = exactness(rows, rt, which)
                suffix = "" if rt == "onnx" else f"_{key(rt)}"
                out[f"nbest_identical_{name}{suffix}"] = same
                out[f"max_score_diff_{name}{suffix}"] = None if diff is None else float(f"{diff:.3g}")
        if o.exactness:
            out["exact_nbest"] = o.exact_nbest
        return out


def run_runtime_bench(
    dirs: dict[str, Path],
    files: Sequence[str | Path],
    refs: dict[str, str] | None = None,
    bench: RuntimeBenchOptions = RuntimeBenchOptions(),
) -> RuntimeBenchResult:
    """Stream every file through every runtime (interleaved), then measure each in a child."""
    from pasu.audio import read_audio
    from pasu.decoding.options import DecodingOptions
    from pasu.streaming import StreamingOptions

    decoding = DecodingOptions()
    backends = {rt: make_backend(rt, dirs[rt], bench.threads, decoding) for rt in bench.runtimes}
    check_same_model(backends)
    exact_decoding = decoding.with_(nbest=bench.exact_nbest)
    exact = {rt: cast(Any, b).with_options(exact_decoding) for rt, b in backends.items()}
    rate = next(iter(backends.values())).sample_rate
    audio = {Path(f).stem: read_audio(f, rate) for f in files}
    on, off = StreamingOptions(), StreamingOptions.stock()
    clock = bench.timer()
    for a in list(audio.values())[: bench.warmup]:
        for b in backends.values():
            stream(b, on, a, bench.chunk_s, clock)
    rows = []
    for i, (utt, a) in enumerate(audio.items()):
        row = ClipRow(utt, len(a) / rate)
        for rt, b in backends.items():
            row.on[rt] = stream(b, on, a, bench.chunk_s, clock)
            if bench.exactness:
                same = exact_decoding == decoding
                row.exact_on[rt] = row.on[rt] if same else stream(exact[rt], on, a, bench.chunk_s, clock)
                row.off[rt] = stream(exact[rt], off, a, bench.chunk_s, clock)
        rows.append(row)
        if (i + 1) % 10 == 0 or i + 1 == len(audio):
            log.info("runtime bench: %d/%d clips", i + 1, len(audio))
    del backends, exact
    result = RuntimeBenchResult(rows, {u: (refs or {}).get(u) for u in audio}, bench)
    if bench.children:
        longest = sorted(audio, key=lambda u: -len(audio[u]))[: max(0, bench.memory_clips - 1)]
        by_stem = {Path(f).stem: str(f) for f in files}
        child_files = [str(files[0]), *(by_stem[u] for u in longest if by_stem[u] != str(files[0]))]
        for rt in bench.runtimes:
            result.children[rt] = measure_in_child(rt, dirs[rt], child_files, bench)
            result.install[rt] = install_size(rt, dirs[rt], result.children[rt]["modules"], bench.lite_venv)
    return result


# -- the child: peak RSS and cold start ----------------------------------------------


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def child_main(runtime: str, path: str, threads: int, chunk_s: float, files: list[str]) -> None:
    """Load ``runtime``, stream ``files`` with every technique on; print a line after the first
    result (its CPU time since process start) and one with the peak RSS."""
    from pasu.audio import read_audio
    from pasu.streaming import StreamingOptions

    backend = make_backend(runtime, path, threads)
    loaded = rss_mb()
    for i, f in enumerate(files):
        run = stream(backend, StreamingOptions(), read_audio(f, backend.sample_rate), chunk_s)
        if i == 0:
            print(json.dumps({"first_result": run.text, "cpu_s": round(_cpu_s(), 3)}), flush=True)
    peak = peak_rss_mb()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    modules = sorted({m.split(".")[0] for m in list(sys.modules) if not m.startswith("_")})
    heavy = [m for m in ("torch", "espnet", "espnet2") if sys.modules.get(m) is not None]
    print(
        json.dumps(
            {
                "loaded_mb": round(loaded, 1),
                "peak_mb": round(peak, 1),
                "ru_maxrss_mb": round(maxrss, 1),
                "torch_imported": bool(heavy),
                "modules": modules,
                "python": sys.executable,
            }
        ),
        flush=True,
    )


def measure_in_child(runtime: str, path: Path, files: list[str], bench: RuntimeBenchOptions) -> dict:
    """Cold start (wall: process start to the first result line; cpu: the child's own CPU time
    by then) and peak RSS of ``runtime`` alone in a fresh interpreter."""
    python = sys.executable
    if bench.lite_venv is not None and runtime != "torch":
        lite = bench.lite_venv / "bin" / "python"
        probe = subprocess.run(
            [str(lite), "-c", "import pasu.tools.bench.runtime"], capture_output=True, check=False, timeout=300
        )
        if probe.returncode == 0:
            python = str(lite)
        else:
            log.warning("%s cannot import pasu.tools.bench.runtime; measuring %s with %s", lite, runtime, python)
    cmd = [python, "-m", "pasu.tools.bench.runtime", runtime, str(path), str(bench.threads), str(bench.chunk_s), *files]
    env = {**os.environ, "OMP_NUM_THREADS": str(bench.threads)}
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: stderr can never block the child
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        watchdog = threading.Timer(CHILD_TIMEOUT_S, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            first_line = proc.stdout.readline()
            first_wall = time.perf_counter() - t0
            rest = proc.stdout.read()
            proc.wait()
        finally:
            watchdog.cancel()
        if proc.returncode != 0 or not first_line:
            err.seek(0)
            raise RuntimeError(f"{runtime} child failed ({proc.returncode}): {err.read()[-2000:]}")
    first = json.loads(first_line)
    last = json.loads(rest.strip().splitlines()[-1])
    return {
        **last,
        "cold_start_wall_s": round(first_wall, 3),
        "cold_start_cpu_s": first["cpu_s"],
        "clips": len(files),
    }


# -- install size ----------------------------------------------------------------------


def _disk_bytes(p: Path) -> int:
    """Bytes ``p`` takes on disk (its blocks; a link counts nothing), as ``du`` counts them."""
    st = p.lstat()
    return 0 if p.is_symlink() else st.st_blocks * 512


def _tree_bytes(root: Path) -> int:
    return sum(_disk_bytes(p) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _dist_bytes(dist) -> int:
    """The files a distribution's RECORD lists, on disk."""
    total = 0
    for f in dist.files or []:
        p = Path(str(dist.locate_file(f)))
        if p.exists() or p.is_symlink():
            total += _disk_bytes(p)
    return total


def required_closure(names: Iterable[str]) -> set[str]:
    """``names`` and every distribution they require (markers evaluated here; extras not taken),
    as canonical names."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def install_size(runtime: str, path: Path, modules: list[str], lite_venv: Path | None = None) -> dict:
    """The packages a runtime needs on disk (MB), and its model files.

    The distributions the child imported, plus what they require; pasu's own (editable)
    install is left out. For onnx with ``lite_venv``: that venv's whole site-packages."""
    from importlib import metadata

    mb = 1024 * 1024
    if runtime == "torch":
        model = sum(p.stat().st_size for p in Path(path).iterdir() if p.suffix in (".pth", ".pt"))
    else:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
        model = sum((Path(path) / g["file"]).stat().st_size for g in manifest["graphs"].values())
    if lite_venv is not None and runtime != "torch":
        sites = list(lite_venv.glob("lib/python*/site-packages"))
        if not sites:
            raise FileNotFoundError(f"{lite_venv}: no lib/python*/site-packages")
        return {"install_mb": round(_tree_bytes(sites[0]) / mb, 1), "model_mb": round(model / mb, 1), "from": "venv"}
    from packaging.utils import canonicalize_name

    mapping = metadata.packages_distributions()
    imported = {canonicalize_name(d) for m in modules for d in mapping.get(m, [])} - {"pasu"}
    sizes = {d: round(_dist_bytes(metadata.distribution(d)) / mb, 1) for d in sorted(required_closure(imported))}
    sizes.pop("pasu", None)
    return {
        "install_mb": round(sum(sizes.values()), 1),
        "imported_mb": round(sum(v for d, v in sizes.items() if d in imported), 1),
        "model_mb": round(model / mb, 1),
        "from": "imports",
        "distributions": sizes,
    }


# -- report ------------------------------------------------------------------------------


def format_table(result: RuntimeBenchResult) -> str:
    s = result.summary()
    cols = [
        ("latency p50 s", "latency_p50_s", "{:.3f}"),
        ("speedup", "speedup_p50", "{:.2f}x"),
        ("RTF during", "rtf_during", "{:.3f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("cold start s", "cold_start_s", "{:.2f}"),
        ("install MB", "install_mb", "{:.0f}"),
        ("model MB", "model_mb", "{:.1f}"),
        ("intent acc", "acc", "{:.3f}"),
        ("acc all-off", "acc_off", "{:.3f}"),
    ]
    lines = [f"{'runtime':<11}" + "".join(f"{c[0]:>14}" for c in cols)]
    for rt in result.options.runtimes:
        cells = []
        for _, name, fmt in cols:
            v = s.get(f"{name}_{key(rt)}")
            cells.append(f"{fmt.format(v) if v is not None else '-':>14}")
        lines.append(f"{rt:<11}" + "".join(cells))
    n = s["n_clips"]
    for rt in result.options.runtimes:
        if rt == REFERENCE:
            continue
        suffix = "" if rt == "onnx" else f"_{key(rt)}"
        parts = [
            f"all-{w} {s[f'nbest_identical_{w}{suffix}']}/{n} (max score diff {s[f'max_score_diff_{w}{suffix}']})"
            for w in ("off", "on")
            if f"nbest_identical_{w}{suffix}" in s
        ]
        if parts:
            lines.append(f"{s['exact_nbest']}-best identical to torch, {rt}: " + ", ".join(parts))
    best = [f"{rt} {s[f'best_identical_{key(rt)}']}/{n}" for rt in result.options.runtimes if rt != REFERENCE]
    if best:
        lines.append("timed runs, best hypothesis as torch's: " + ", ".join(best))
    how = {"imports": "imported distributions + their requirements", "venv": "the lite venv's site-packages"}
    sources = [f"{rt}: {how[i['from']]}" for rt, i in result.install.items()]
    if sources:
        lines.append("install MB = " + "; ".join(sources))
    lines.append(f"clock {s['clock']}, {s['threads']} thread(s); cold start is CPU time with --clock cpu")
    return "\n".join(lines)


def result_dict(result: RuntimeBenchResult) -> dict:
    o = asdict(result.options)
    o["lite_venv"] = str(o["lite_venv"]) if o["lite_venv"] else None
    return {
        "summary": result.summary(),
        "options": o,
        "children": result.children,
        "install": result.install,
        "rows": [asdict(r) for r in result.rows],
    }


def dumps(result: dict) -> str:
    """``result_dict`` as JSON: the summary and settings indented, one line per clip row."""
    head = {k: v for k, v in result.items() if k != "rows"}
    text = json.dumps(head, indent=1)[:-2]  # drop the closing "\n}"
    rows = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in result.get("rows", []))
    return f'{text},\n "rows": [\n  {rows}\n ]\n}}\n'


# -- CLI ---------------------------------------------------------------------------------


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runtime",
        help="the device model on torch vs onnxruntime (fp32, int8): latency, RTF, RSS, cold start, "
        "install size, exactness",
    )
    p.add_argument("--model", default=None, help="device model directory (default: the shipped device model)")
    p.add_argument("--onnx", type=Path, default=None, help="a `pasu export` of --model (default: export now)")
    p.add_argument("--onnx-int8", type=Path, default=None, help="a `pasu export --int8` of --model (default: now)")
    p.add_argument("--work", type=Path, default=None, help="where to write the exports made now (default: a temp dir)")
    p.add_argument(
        "--audio", nargs="+", default=None, help="audio files or an ESPnet data dir (default: the shipped eval subset)"
    )
    p.add_argument("--limit", type=int, default=None, help="the first N clips")
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    p.add_argument("--chunk-s", type=float, default=0.16)
    p.add_argument("--clock", choices=("wall", "cpu"), default="cpu", help="compute as elapsed or as CPU time")
    p.add_argument("--threads", type=int, default=1, help="torch / onnxruntime intra-op threads")
    p.add_argument("--no-exactness", action="store_true", help="skip the untimed exactness decodes")
    p.add_argument("--exact-nbest", type=int, default=5, help="n-best length of the exactness decodes (default 5)")
    p.add_argument("--no-children", action="store_true", help="skip peak RSS, cold start and install size")
    p.add_argument("--memory-clips", type=int, default=10, help="clips each child decodes for its peak RSS")
    p.add_argument("--lite-venv", type=Path, default=None, help="a venv with pasu[lite] only (install size)")
    p.add_argument("--json-out", type=Path, default=None)
    p.set_defaults(func=run)


def _clips(audio: list[str] | None) -> tuple[list[str], dict[str, str]]:
    from pasu.audio import read_scp
    from pasu.resources import EVAL_DIR, eval_audio
    from pasu.tools.commands.common import expand_audio_args

    if not audio:
        text = EVAL_DIR / "text"
        return [str(p) for p in eval_audio()], read_scp(text) if text.is_file() else {}
    if len(audio) == 1 and Path(audio[0]).is_dir():
        d = Path(audio[0])
        return expand_audio_args([str(d / "wav.scp")]), read_scp(d / "text") if (d / "text").is_file() else {}
    return expand_audio_args(list(audio)), {}


def run(args: argparse.Namespace) -> int:
    from pasu.model_store import resolve_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.INFO)  # progress, also where the CLI configured logging already
    model_dir = Path(resolve_model(args.model))
    files, refs = _clips(args.audio)
    if args.limit:
        files = files[: args.limit]
    if not files:
        raise SystemExit("no audio to benchmark")
    runtimes = tuple(args.runtimes)
    if REFERENCE not in runtimes:
        runtimes = (REFERENCE, *runtimes)
    bench = RuntimeBenchOptions(
        runtimes=runtimes,
        chunk_s=args.chunk_s,
        clock=args.clock,
        threads=args.threads,
        exactness=not args.no_exactness,
        exact_nbest=args.exact_nbest,
        memory_clips=args.memory_clips,
        children=not args.no_children,
        lite_venv=args.lite_venv,
    )
    given = {rt: p for rt, p in (("onnx", args.onnx), ("onnx-int8", args.onnx_int8)) if p is not None}
    from pasu.lite.model import LiteModelError

    with tempfile.TemporaryDirectory(prefix="pasu-bench-runtime-") as tmp:
        try:
            dirs = export_dirs(model_dir, runtimes, args.work or Path(tmp), given)
            result = run_runtime_bench(dirs, files, refs, bench)
        except (RuntimeBenchError, LiteModelError) as e:
            raise SystemExit(f"pasu bench runtime: {e}") from e
    print(f"model: {model_dir}; {len(files)} clips; chunk {args.chunk_s} s; simulated clock ({args.clock})")
    print(format_table(result))
    summary = result.summary()
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(dumps(result_dict(result)))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    _rt, _path, _threads, _chunk, *_files = sys.argv[1:]
    child_main(_rt, _path, int(_threads), float(_chunk), _files)
