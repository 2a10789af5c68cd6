"""The `pasu` command line: real subprocesses, real output contracts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def pasu(*args: str, env_extra: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "pasu.cli", *args], capture_output=True, text=True, env=env, check=check, timeout=600
    )


def test_help_lists_subcommands():
    out = pasu("--help").stdout
    for cmd in ("demo", "decode", "model", "bench"):
        assert cmd in out


@pytest.mark.slow
def test_decode_json_lines(tiny_model_dirs, audio_files, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(f) for f in audio_files[:2]) + "\n")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    r = pasu(
        "decode", "--model", str(tiny_model_dirs["conformer"]), "--nbest", "2", str(listing), str(bad), check=False
    )
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(audio_files[0]), str(audio_files[1]), str(bad)]
    assert all(len(line["nbest"]) == 2 and line["text"] == line["nbest"][0]["text"] for line in lines[:2])
    assert "cannot decode" in lines[2]["error"]
    assert r.returncode == 1  # a bad file is reported, the others still decoded


@pytest.mark.slow
def test_bench_decoder_last_line_contract(tiny_model_dirs, audio_files):
    r = pasu("bench", "decoder", "--model", str(tiny_model_dirs["branchformer"]), "--audio", *map(str, audio_files[:3]))
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"espnet_s", "pasu_s", "speedup", "identical", "utterances"} <= set(last)
    assert last["identical"] is True and last["utterances"] == 3
    assert last["espnet_s"] > 0 and last["pasu_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("args", [["decode", "--model", "/nonexistent", "x.wav"]])
def test_clear_error_for_missing_model(args):
    r = pasu(*args, check=False)
    assert r.returncode != 0
    assert "model path does not exist: /nonexistent" in r.stderr


@pytest.mark.slow
def test_bench_latency_last_line_contract(tiny_model_dirs, audio_files):
    r = pasu(
        "bench",
        "latency",
        "--model",
        str(tiny_model_dirs["late"]),
        "--no-ablation",
        "--audio",
        *map(str, audio_files[:2]),
    )
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert {
        "espnet_p50_s",
        "pasu_p50_s",
        "ratio_p50",
        "acc_espnet",
        "acc_pasu",
        "ratio_p50_vs_off",
        "fired",
        "after_speech_decoder_s",
        "rtf_during",
        "off_p50_s",
    } <= set(last)
    assert set(last["fired"]) >= {"pilots", "beam_collapse", "ctc_leap", "late_context"}
    assert last["utterances"] == 2 and last["espnet_p50_s"] > 0 and last["pasu_p50_s"] > 0


@pytest.mark.slow
def test_demo_runs_device_and_cloud(tmp_path):
    r = pasu("demo", "--limit", "1", env_extra={"PASU_CACHE": str(tmp_path)})
    out = r.stdout
    assert "cloud worker: 127.0.0.1:" in out
    assert "cmd00.flac" in out and "decided on" in out and "said:   wake me up at seven am" in out
    # the harder clips show the hybrid: offloaded while the user still spoke, and why (issue 24)
    assert "offloaded at pilot" in out, out[-3000:]
