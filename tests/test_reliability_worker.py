"""The worker as a separate process (`pasu cloud serve`, as operators run it): a short soak through
`pasu bench soak`, no secrets in its JSON logs, a poisoned checkpoint refused, loopback-only targets.

One child worker (tiny model, bearer tokens from a file and from the environment) serves the
soak and the secrets test; the poisoned-checkpoint worker must exit on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pasu.cloud import client as C
from pasu.cloud.cli import TOKENS_ENV
from pasu.tools.bench.soak import ChildWorker, SoakOptions, check_loopback, register_bench

pytestmark = pytest.mark.timeout(240)

FILE_TOKEN = "tok-from-file-7f3a9c2e51d84b06"
ENV_TOKEN = "tok-from-env-d41d8cd98f00b204"
WRONG_TOKENS = (FILE_TOKEN + "x", FILE_TOKEN[:-1], "tok-wrong-0123456789abcdef", ENV_TOKEN.upper())


@pytest.fixture(scope="module")
def served(tiny_model_dirs, tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    (d / "tokens.txt").write_text(f"{FILE_TOKEN}\n")
    env = {**os.environ, TOKENS_ENV: ENV_TOKEN, "OMP_NUM_THREADS": "1"}
    w = ChildWorker(
        str(tiny_model_dirs["conformer"]),
        ["--bearer-token-file", str(d / "tokens.txt"), "--beam-size", "1", "--max-batch-wait-ms", "0"],
        d / "worker.log",
        env,
    )
    w.start(timeout=180)
    w.dir = d
    yield w
    w.stop()


def soak_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pasu bench")
    register_bench(p.add_subparsers(dest="bench_command", required=True))
    args = p.parse_args(["soak", *argv])
    return args.func(args)


@pytest.mark.slow
def test_soak_smoke(served, capsys):
    """`pasu bench soak` against the child worker: every segment answered, memory sampled."""
    (served.dir / "client-token").write_text(ENV_TOKEN + "\n")
    rc = soak_cli(
        [
            "--target",
            f"127.0.0.1:{served.port}",
            "--worker-pid",
            str(served.pid),
            "--token-file",
            str(served.dir / "client-token"),
            "--concurrency",
            "3",
            "--duration",
            "4",
            "--segments-per-client",
            "2",
            "--clips",
            "3",
            "--timeout",
            "90",
            "--sample-interval",
            "0.5",
        ]
    )
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert rc == 0, out
    assert summary["errors"] == 0 and summary["lost"] == 0
    assert summary["answered"] == summary["segments"] >= 3
    assert summary["offload_answered"] >= 1 and summary["recognize_answered"] >= 1
    for key in ("p50_s", "p99_s", "rss_growth_mb", "rss_before_mb", "threads_end", "fds_end"):
        assert summary[key] is not None, key
    assert summary["rss_before_mb"] > 50  # a torch process, really sampled
    assert "answered" in out and "worker RSS" in out


def _call(port: int, metadata) -> grpc.StatusCode:
    import numpy as np

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            C.stub(ch).Recognize(
                C.recognize_request("secrets-probe", np.zeros(4000, np.float32)), metadata=metadata, timeout=60
            )
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()


@pytest.mark.slow
def test_no_secrets_in_logs(served):
    """Right and wrong tokens, in every shape: the log never holds a token string, nor does argv."""
    port = served.port
    for tok in (FILE_TOKEN, ENV_TOKEN):
        assert _call(port, (("authorization", f"Bearer {tok}"),)) == grpc.StatusCode.OK
    bad = [(("authorization", f"Bearer {t}"),) for t in WRONG_TOKENS]
    bad += [
        (("authorization", FILE_TOKEN),),  # no scheme
        (("authorization", f"Basic {FILE_TOKEN}"),),
        (("x-api-key", FILE_TOKEN),),  # the right token in the wrong header
        (("authorization", f"Bearer  {WRONG_TOKENS[2]}  "),),
    ]
    for md in bad:
        assert _call(port, md) == grpc.StatusCode.UNAUTHENTICATED, md
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # health needs no token
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert st == health_pb2.HealthCheckResponse.SERVING
    cmdline = open(f"/proc/{served.pid}/cmdline", "rb").read().decode(errors="replace")
    served.stop()  # flush and close the log
    log = served.log_path.read_text(errors="replace")
    for secret in (FILE_TOKEN, ENV_TOKEN, *WRONG_TOKENS, FILE_TOKEN[:16], ENV_TOKEN[:16]):
        assert secret not in log, f"{secret!r} in the worker log"
        assert secret not in cmdline
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    denied = [r for r in records if r.get("msg") == "unauthenticated call"]
    assert len(denied) == len(bad) and all(r["reason"] for r in denied)
    assert sum(r.get("msg") == "request" and r.get("status") == "OK" for r in records) >= 2
    assert not [r for r in records if r.get("level") == "ERROR"]


@pytest.mark.slow
def test_poisoned_checkpoint_refused_by_cloud_serve(poisoned_model_dir, tmp_path):
    """`pasu cloud serve --model DIR` with a pickle payload in model.pth: refused, not run, exit 1."""
    d = poisoned_model_dir
    cmd = [sys.executable, "-m", "pasu.tools.bench.soak", "cloud", "serve", "--model", str(d), "--port", "0"]
    p = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert p.returncode == 1, p.stderr[-2000:]
    assert "listening on 127.0.0.1:" in p.stdout  # it bound, stayed NOT_SERVING, then gave up
    failed = [
        json.loads(line) for line in p.stderr.splitlines() if line.startswith("{") and '"model failed to load"' in line
    ]
    assert failed and "cannot load weights" in failed[0].get("exc", "")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "target",
    [
        "10.0.0.1:50051",
        "0.0.0.0:50051",
        "192.168.1.2:1",
        "example.com:443",
        "[2001:db8::1]:1",
        "127.0.0.1",
        "host:port",
    ],
)
def test_soak_refuses_non_loopback_targets(target):
    with pytest.raises(SystemExit):
        check_loopback(target)


@pytest.mark.parametrize("target", ["127.0.0.1:50051", "127.3.4.5:1", "localhost:50051", "[::1]:50051"])
def test_soak_accepts_loopback_targets(target):
    check_loopback(target)


def test_soak_options_are_bounded():
    for bad in (
        dict(duration_s=0),
        dict(duration_s=1e9),
        dict(concurrency=0),
        dict(concurrency=5000),
        dict(segments_per_client=0),
        dict(rpc="streaming"),
        dict(timeout_s=0),
        dict(pace_s=-1),
    ):
        with pytest.raises(ValueError):
            SoakOptions(**bad)
