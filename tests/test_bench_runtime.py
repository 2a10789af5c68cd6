"""`pasu bench runtime`: torch vs onnx vs onnx-int8 on real clips of the shipped eval subset.

One CLI run (a subprocess) on two clips exports the shipped device model (fp32 and
int8), streams each clip through all three runtimes and measures each in a child
interpreter. The checks: every contracted key is there, the last stdout line is the
JSON summary, the exactness counts are recomputed from the per-clip n-best the run
wrote, and torch's all-off n-best (5 entries) equals a separate whole-utterance decode.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pasu.audio import read_audio
from pasu.decoding import DecodingOptions, Recognizer
from pasu.models import load_model
from pasu.resources import MODELS, eval_audio
from pasu.tools.bench.runtime import RUNTIMES, key

pytestmark = pytest.mark.slow  # two exports of the device model and three child interpreters

N = 2
KEYS = ["n_clips", "nbest_identical_off", "nbest_identical_on", "max_score_diff_off", "max_score_diff_on"]
PER_RUNTIME = ["latency_p50_s", "rtf_during", "peak_rss_mb", "cold_start_s", "install_mb", "acc", "acc_off"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, exports) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("bench-runtime")
    done = _bench("--limit", str(N), "--memory-clips", "2", "--work", str(exports), "--json-out", str(out / "r.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    return last, json.loads((out / "r.json").read_text())


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """Where the benchmark writes its exports (``--work``): ``onnx/`` and ``onnx-int8/``."""
    return tmp_path_factory.mktemp("exports")


def _bench(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pasu.cli", "bench", "runtime", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)


def test_summary_keys(bench):
    summary, written = bench
    assert written["summary"] == summary
    assert summary["n_clips"] == N and summary["clock"] == "cpu" and summary["threads"] == 1
    for k in KEYS:
        assert k in summary, k
    for rt in RUNTIMES:
        for k in PER_RUNTIME:
            assert summary[f"{k}_{key(rt)}"] is not None, f"{k}_{key(rt)}"
        assert summary[f"peak_rss_mb_{key(rt)}"] > 0 and summary[f"cold_start_s_{key(rt)}"] > 0
    assert summary["torch_imported_torch"] and not summary["torch_imported_onnx"]
    assert summary["model_mb_onnx_int8"] < summary["model_mb_onnx"]  # the int8 export is the int8 one


def test_exactness_counts_come_from_the_decodes(bench):
    summary, written = bench
    rows = written["rows"]
    assert len(rows) == N
    for which, name in (("off", "off"), ("exact_on", "on")):
        same = sum(r[which]["onnx"]["nbest"] == r[which]["torch"]["nbest"] for r in rows)
        assert summary[f"nbest_identical_{name}"] == same
        for r in rows:
            for rt in RUNTIMES:
                nbest = r[which][rt]["nbest"]
                assert nbest and all(nbest), (which, rt)  # real hypotheses, not empty lists
                assert len(nbest) > 1  # an n-best list (exact_nbest 5), not just the best
    # the exported model is exact (issue 26): the same n-best, scores within 1e-3
    assert summary["nbest_identical_off"] == summary["nbest_identical_on"] == N
    assert summary["max_score_diff_off"] <= 1e-3 and summary["max_score_diff_on"] <= 1e-3


def test_torch_all_off_is_the_whole_utterance_decode(bench):
    summary, written = bench
    rec = Recognizer(load_model(MODELS / "device"), DecodingOptions(nbest=summary["exact_nbest"]))
    for row, path in zip(written["rows"], eval_audio(N), strict=True):
        assert row["utt"] == Path(path).stem
        direct = rec.recognize([read_audio(path)])[0]
        assert row["off"]["torch"]["nbest"] == [e.token_ids for e in direct]


def test_a_wrong_export_is_a_clear_error(bench, exports):
    done = _bench("--limit", "1", "--no-children", "--runtimes", "onnx-int8", "--onnx-int8", str(exports / "onnx"))
    assert done.returncode != 0
    assert "is not an export for runtime onnx-int8" in done.stderr and "Traceback" not in done.stderr
