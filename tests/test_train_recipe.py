"""`pasu train` smoke run: every recipe stage on a tiny corpus with the tiny configs.

One epoch of a ~0.1 M-parameter pair on 16 utterances: the numbers are
meaningless, the point is that each stage runs, resumes, and that the packages
are ordinary ESPnet models sharing one decoder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pasu.cli import main
from pasu.tools.data.engines import FLITE_TEST, FLITE_TRAIN, detect_engines
from pasu.tools.data.synth import SynthOptions, synthesize_corpus

ENGINES = detect_engines()
needs_engines = pytest.mark.skipif(
    not (ENGINES.espeak_ng and set(FLITE_TRAIN) <= set(ENGINES.flite) and set(FLITE_TEST) & set(ENGINES.flite)),
    reason="espeak-ng and flite are not installed; run tools/data/install_engines.sh",
)
PER_SPLIT = 12
pytestmark = pytest.mark.slow  # TTS engines and training runs


def pasu_train(argv: list[str]) -> None:
    """``pasu train ...`` in a fresh interpreter, as a user runs it: native code (sentencepiece,
    ESPnet's trainer) must not inherit the threads and state hundreds of earlier tests left here."""
    r = subprocess.run([sys.executable, "-m", "pasu.cli", "train", *argv], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipe")
    opts = SynthOptions(out_dir=root / "data", seed=5, jobs=2, progress=False).with_per_split(PER_SPLIT)
    assert synthesize_corpus(opts, engines=ENGINES).failed == []
    pasu_train(
        [
            "--tiny",
            "--data",
            str(root / "data"),
            "--exp",
            str(root / "exp"),
            "--eval-limit",
            "3",
            "--eval-beam",
            "2",
            "--num-workers",
            "0",
        ]
    )
    return root


@needs_engines
def test_every_stage_leaves_its_outputs(recipe: Path) -> None:
    exp = recipe / "exp"
    timings = json.loads((exp / "timings.json").read_text())
    stages = {"tokens", "stats", "bootstrap", "branches", "device_ctc", "cloud", "device", "package", "eval"}
    assert set(timings) == stages | {f"{s}_cpu" for s in stages}
    assert (exp / "stats" / "train" / "feats_stats.npz").is_file()
    assert all((exp / role / "train.done").is_file() for role in ("bootstrap", "device_ctc", "cloud", "device"))
    assert (exp / "cloud" / "grown_init.pth").is_file()  # the cloud started from the device encoder
    weights = json.loads((exp / "bootstrap" / "branch_weights.json").read_text())["attention_weight"]
    assert len(weights) == 2 and all(0.0 < w < 1.0 for w in weights)
    for role in ("cloud", "device"):
        d = exp / "models" / role
        assert {p.name for p in d.iterdir()} >= {
            "config.yaml",
            "model.pth",
            "feats_stats.npz",
            "tokens.txt",
            "bpe.model",
            "model_card.md",
            "eval_test_voices.json",
            "eval_test_hard.json",
        }
        assert "| test_voices |" in (d / "model_card.md").read_text()


@needs_engines
def test_rerun_skips_finished_stages(recipe: Path) -> None:
    exp = recipe / "exp"
    before = {p: p.stat().st_mtime_ns for p in (exp / "models").rglob("*") if p.is_file()}
    assert main(["train", "--tiny", "--data", str(recipe / "data"), "--exp", str(exp)]) == 0
    after = {p: p.stat().st_mtime_ns for p in (exp / "models").rglob("*") if p.is_file()}
    assert before == after


@needs_engines
def test_packaged_config_names_only_files_in_the_model_dir(recipe: Path) -> None:
    import yaml

    for role in ("cloud", "device"):
        cfg = yaml.safe_load((recipe / "exp" / "models" / role / "config.yaml").read_text())
        assert cfg["token_list"] == "tokens.txt"
        assert cfg["bpemodel"] == "bpe.model"
        assert cfg["normalize_conf"]["stats_file"] == "feats_stats.npz"
        assert cfg["init_param"] == [] and cfg["train_data_path_and_name_and_type"] == []
        assert cfg["pasu"]["role"] == role
    device = yaml.safe_load((recipe / "exp" / "models" / "device" / "config.yaml").read_text())
    assert device["encoder"] == "late_context" and device["freeze_param"] == ["decoder"]
    cloud = yaml.safe_load((recipe / "exp" / "models" / "cloud" / "config.yaml").read_text())
    assert cloud["encoder"] == "conformer" and cloud["freeze_param"] == []  # it trains the decoder


@needs_engines
def test_models_load_with_pasu_and_share_the_decoder(recipe: Path) -> None:
    from pasu.models import load_model

    cloud = load_model(recipe / "exp" / "models" / "cloud")
    device = load_model(recipe / "exp" / "models" / "device")
    assert type(device.model.encoder).__name__ == "LateContextEncoder"
    assert type(cloud.model.encoder).__name__ == "ConformerEncoder"
    assert cloud.token_list == device.token_list
    c, d = cloud.model.decoder.state_dict(), device.model.decoder.state_dict()
    assert c.keys() == d.keys()
    for k in c:
        assert torch.equal(c[k], d[k]), k


@needs_engines
def test_espnet_kept_the_frozen_decoder(recipe: Path) -> None:
    """The checkpoints as ESPnet wrote them, before packaging pins anything."""
    from pasu.models import load_state_dict

    exp = recipe / "exp"
    bootstrap = load_state_dict(exp / "bootstrap" / "valid.acc.ave.pth")
    encoder = load_state_dict(exp / "device_ctc" / "valid.acc.ave.pth")
    cloud = load_state_dict(exp / "cloud" / "valid.acc.ave.pth")
    device = load_state_dict(exp / "device" / "valid.acc.ave.pth")
    keys = [k for k in cloud if k.startswith("decoder.")]
    assert keys and all(torch.equal(cloud[k], device[k]) for k in keys)  # the device kept the cloud's
    assert not any(k.startswith("decoder.") for k in encoder)  # CTC only: ESPnet builds no decoder
    assert not all(torch.equal(bootstrap[k], cloud[k]) for k in keys)  # the cloud trained it
    assert not torch.equal(cloud["ctc.ctc_lo.weight"], device["ctc.ctc_lo.weight"])  # the rest trained


@needs_engines
def test_models_load_with_espnet_speech2text(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from espnet2.bin.asr_inference import Speech2Text

    import pasu.encoders  # noqa: F401  (late_context for the device model)
    from pasu.audio import read_audio, read_scp

    wav = next(iter(read_scp(recipe / "data" / "test_voices" / "wav.scp").values()))
    audio = read_audio(wav)
    for role in ("cloud", "device"):
        monkeypatch.chdir(recipe / "exp" / "models" / role)  # ESPnet resolves paths from the cwd
        s2t = Speech2Text(
            asr_train_config="config.yaml",
            asr_model_file="model.pth",
            beam_size=2,
            ctc_weight=0.3,
            maxlenratio=0.3,
            device="cpu",
        )
        results = s2t(torch.as_tensor(audio))
        assert results and isinstance(results[0][0], str)


@needs_engines
def test_eval_prints_a_table_and_a_json_line(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "eval",
        "--model",
        str(recipe / "exp" / "models" / "device"),
        "--data",
        str(recipe / "data" / "test_voices"),
        "--limit",
        "2",
        "--beam-size",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("intent accuracy") for line in lines)
    summary = json.loads(lines[-1])
    assert set(summary) == {"intent_acc", "wer", "utterances"}
    assert summary["utterances"] == 2 and 0.0 <= summary["intent_acc"] <= 1.0
    # --card-row: the same figures become a row of the model card
    model = tmp_path / "device"
    shutil.copytree(recipe / "exp" / "models" / "device", model)
    assert main([*argv[:2], str(model), *argv[3:], "--card-row", "test_voices_first2"]) == 0
    assert json.loads((model / "eval_test_voices_first2.json").read_text()) == summary
    assert "| test_voices_first2 | 2 |" in (model / "model_card.md").read_text()


@needs_engines
def test_init_from_continues_the_pair_with_its_decoder(recipe: Path) -> None:
    """`pasu train --init-from`: both models continue from their own weights, side by
    side, with the pair's tokens and statistics and the shared decoder untouched."""
    import yaml

    from pasu.models import load_state_dict

    pair, exp = recipe / "exp" / "models", recipe / "exp_ft"
    pasu_train(
        [
            "--tiny",
            "--data",
            str(recipe / "data"),
            "--exp",
            str(exp),
            "--init-from",
            str(pair),
            "--finetune-epochs",
            "1",
            "--model-version",
            "9",
            "--num-workers",
            "0",
            "--stages",
            "tokens,stats,bootstrap,cloud,device,package",
        ]
    )
    assert not (exp / "bootstrap").exists()  # not needed when fine-tuning
    assert set(json.loads((exp / "timings.json").read_text())) >= {"cloud", "device", "cloud_cpu", "device_cpu"}
    for role in ("cloud", "device"):
        new = exp / "models" / role
        for name in ("tokens.txt", "bpe.model", "feats_stats.npz"):
            assert (new / name).read_bytes() == (pair / role / name).read_bytes(), (role, name)
        before, after = load_state_dict(pair / role / "model.pth"), load_state_dict(new / "model.pth")
        assert before.keys() == after.keys()
        decoder = [k for k in before if k.startswith("decoder.")]
        assert decoder and all(torch.equal(before[k], after[k]) for k in decoder), role
        assert not torch.equal(before["ctc.ctc_lo.weight"], after["ctc.ctc_lo.weight"]), role
        meta = yaml.safe_load((new / "config.yaml").read_text())["pasu"]
        assert meta["version"] == "9" and "continued from" in meta["history"][-1]
        assert yaml.safe_load((new / "config.yaml").read_text())["freeze_param"] == ["decoder"]


@needs_engines
def test_init_from_one_role_carries_the_other_over(recipe: Path, tmp_path: Path) -> None:
    """`--init-from` with `--stages ...,cloud,package`: only the cloud trains; the device
    package is the pair's, byte for byte, because the frozen decoder still fits it —
    and a device whose decoder differs from the new cloud's is refused."""
    from pasu.models import load_state_dict
    from pasu.tools.train.recipe import carry_over

    pair, exp = recipe / "exp" / "models", recipe / "exp_cloud_only"
    pasu_train(
        [
            "--tiny",
            "--data",
            str(recipe / "data"),
            "--exp",
            str(exp),
            "--init-from",
            str(pair),
            "--finetune-epochs",
            "1",
            "--model-version",
            "9",
            "--num-workers",
            "0",
            "--stages",
            "tokens,stats,cloud,package",
        ]
    )
    assert not (exp / "device").exists()
    new = exp / "models"
    assert {p.name: p.read_bytes() for p in (new / "device").iterdir()} == {
        p.name: p.read_bytes() for p in (pair / "device").iterdir()
    }
    before, after = load_state_dict(pair / "cloud" / "model.pth"), load_state_dict(new / "cloud" / "model.pth")
    assert not torch.equal(before["ctc.ctc_lo.weight"], after["ctc.ctc_lo.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))

    drifted = tmp_path / "device"
    drifted.mkdir()
    state = load_state_dict(pair / "device" / "model.pth")
    key = next(k for k in state if k.startswith("decoder.") and state[k].is_floating_point())
    state[key] = state[key] + 0.01
    torch.save(state, drifted / "model.pth")
    with pytest.raises(ValueError, match="drifted"):
        carry_over(drifted, tmp_path / "out" / "device", new / "cloud")
    assert not (tmp_path / "out" / "device").exists()


@needs_engines
def test_init_from_retrain_decoder_moves_the_decoder_and_the_device_follows(recipe: Path) -> None:
    """`--init-from --retrain-decoder`: the cloud trains the shared decoder, then the
    device adapts to that decoder, frozen: both packages carry the new decoder."""
    import yaml

    from pasu.models import load_state_dict

    pair, exp = recipe / "exp" / "models", recipe / "exp_new_decoder"
    pasu_train(
        [
            "--tiny",
            "--data",
            str(recipe / "data"),
            "--exp",
            str(exp),
            "--init-from",
            str(pair),
            "--retrain-decoder",
            "--finetune-epochs",
            "1",
            "--num-workers",
            "0",
            "--stages",
            "tokens,stats,cloud,device,package",
        ]
    )
    old = load_state_dict(pair / "cloud" / "model.pth")
    cloud = load_state_dict(exp / "models" / "cloud" / "model.pth")
    device = load_state_dict(exp / "models" / "device" / "model.pth")
    decoder = [k for k in old if k.startswith("decoder.") and old[k].is_floating_point()]
    assert any(not torch.equal(old[k], cloud[k]) for k in decoder)  # the cloud trained it
    assert all(torch.equal(cloud[k], device[k]) for k in decoder)  # and the device carries it
    before = load_state_dict(pair / "device" / "model.pth")
    assert not torch.equal(before["ctc.ctc_lo.weight"], device["ctc.ctc_lo.weight"])
    assert yaml.safe_load((exp / "models" / "device" / "config.yaml").read_text())["freeze_param"] == ["decoder"]
    assert (
        "decoder retrained"
        in yaml.safe_load((exp / "models" / "cloud" / "config.yaml").read_text())["pasu"]["history"][-1]
    )


@needs_engines
def test_float16_packages_are_half_the_size_and_load_as_float32(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--weights-dtype float16`: what lets a deeper cloud fit 30 MB. Both loaders cast
    the weights into a float32 model, and the pair still shares one decoder."""
    from espnet2.bin.asr_inference import Speech2Text

    import pasu.encoders  # noqa: F401  (late_context for the device model)
    from pasu.audio import read_audio, read_scp
    from pasu.models import load_model, load_state_dict
    from pasu.tools.train.package import PackageInfo, package_model
    from pasu.tools.train.recipe import best_checkpoint

    exp = recipe / "exp"
    for role in ("cloud", "device"):
        package_model(
            exp / role,
            best_checkpoint(exp / role),
            exp / "tokens",
            exp / "stats" / "train" / "feats_stats.npz",
            tmp_path / role,
            PackageInfo(f"pasu-{role}", role, "9", recipe / "data"),
            shared_decoder_from=tmp_path / "cloud" / "model.pth" if role == "device" else None,
            weights_dtype=torch.float16,
        )
        full, half = (
            load_state_dict(exp / "models" / role / "model.pth"),
            load_state_dict(tmp_path / role / "model.pth"),
        )
        assert {v.dtype for v in half.values() if v.is_floating_point()} == {torch.float16}
        for k, v in full.items():
            if v.is_floating_point():
                torch.testing.assert_close(half[k].float(), v, rtol=2**-10, atol=1e-7)
        assert (tmp_path / role / "model.pth").stat().st_size < 0.6 * (
            exp / "models" / role / "model.pth"
        ).stat().st_size
        model = load_model(tmp_path / role)
        assert {p.dtype for p in model.model.parameters()} == {torch.float32}
    cloud, device = (load_model(tmp_path / r).model.decoder.state_dict() for r in ("cloud", "device"))
    assert all(torch.equal(cloud[k], device[k]) for k in cloud)

    audio = read_audio(next(iter(read_scp(recipe / "data" / "test_voices" / "wav.scp").values())))
    monkeypatch.chdir(tmp_path / "device")
    s2t = Speech2Text(
        asr_train_config="config.yaml",
        asr_model_file="model.pth",
        beam_size=2,
        ctc_weight=0.3,
        maxlenratio=0.3,
        device="cpu",
    )
    assert isinstance(s2t(torch.as_tensor(audio))[0][0], str)
