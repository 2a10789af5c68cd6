"""pasu.tools.train pieces that need no training: tokens, the attention rule, scoring, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pasu.tools.train.evaluate import EvalResult
from pasu.tools.train.recipe import (
    CONFIG_DIR,
    NLSYMS,
    RecipeOptions,
    choose_attention_blocks,
    write_cloud_config,
    write_device_config,
)
from pasu.tools.train.tokens import read_nlsyms, train_bpe


def test_intent_labels_are_single_bpe_tokens(tmp_path: Path) -> None:
    import sentencepiece as spm

    intents = read_nlsyms(NLSYMS)
    assert len(intents) == 54
    text = tmp_path / "text"
    text.write_text("u1 alarm_set wake me up at seven am\nu2 weather_query is it raining in paris\n")
    model, tokens = train_bpe([text], intents, tmp_path / "tok", vocab_size=120)
    token_list = tokens.read_text().split()
    assert token_list[0] == "<blank>" and token_list[1] == "<unk>" and token_list[-1] == "<sos/eos>"
    assert set(intents) <= set(token_list)
    pieces = spm.SentencePieceProcessor(model_file=str(model)).encode("alarm_set wake me up", out_type=str)
    assert [p for p in pieces if p != "▁"][0] == "alarm_set"


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([0.05, 0.1, 0.15, 0.1, 0.3, 0.4, 0.5, 0.6], 4),  # attention from layer 4 up
        ([0.05, 0.1, 0.15, 0.1, 0.1, 0.1, 0.5, 0.6], 2),
        ([0.1] * 8, 1),  # at least one attention block
        ([0.5] * 8, 4),  # at most half (the device must stay incremental)
        ([0.1, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.25], 4),  # contiguous on top, capped
    ],
)
def test_attention_split_rule(weights: list[float], expected: int) -> None:
    assert choose_attention_blocks(weights) == expected


def test_device_and_cloud_configs_take_the_bootstrap_decoder_and_width(tmp_path: Path) -> None:
    opts = RecipeOptions(exp_dir=tmp_path, device_attention_blocks=3)
    cfg = write_device_config(opts, tmp_path / "device.yaml")
    bootstrap = yaml.safe_load((CONFIG_DIR / "train_bootstrap.yaml").read_text())
    assert cfg["decoder_conf"] == bootstrap["decoder_conf"]
    assert cfg["encoder_conf"]["output_size"] == bootstrap["encoder_conf"]["output_size"]
    assert cfg["encoder_conf"]["num_attention_blocks"] == 3
    assert cfg["encoder_conf"]["num_local_blocks"] + 3 == bootstrap["encoder_conf"]["num_blocks"]
    assert yaml.safe_load((tmp_path / "device.yaml").read_text()) == cfg
    cloud = write_cloud_config(opts, tmp_path / "cloud.yaml")
    assert cloud["encoder"] == "conformer" and cloud["decoder_conf"] == bootstrap["decoder_conf"]
    assert cloud["encoder_conf"]["num_blocks"] == bootstrap["encoder_conf"]["num_blocks"]


def test_cloud_config_must_match_the_decoder_width(tmp_path: Path) -> None:
    cloud = yaml.safe_load((CONFIG_DIR / "train_cloud.yaml").read_text())
    cloud["encoder_conf"]["output_size"] = 64
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cloud))
    opts = RecipeOptions(exp_dir=tmp_path, cloud_config=tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="shared decoder's width"):
        write_cloud_config(opts, tmp_path / "cloud.yaml")


@pytest.mark.parametrize(
    "name", [f"train_{role}{size}" for role in ("bootstrap", "cloud", "device") for size in ("", "_tiny")]
)
def test_training_configs_use_specaug_and_global_mvn(name: str) -> None:
    cfg = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert cfg["specaug"] == "specaug" and cfg["normalize"] == "global_mvn"


def test_scores_intent_first_word_and_wer_on_the_rest() -> None:
    r = EvalResult(
        refs={"a": "alarm_set wake me up", "b": "weather_query is it raining"},
        hyps={"a": "alarm_set wake me", "b": "alarm_query is it raining"},
    )
    assert r.intent_acc == 0.5
    assert r.wer == pytest.approx(1 / 6)
    assert r.summary() == {"intent_acc": 0.5, "wer": 0.1667, "utterances": 2}


def test_device_warm_start_takes_front_end_and_ctc_only_when_shapes_match(tmp_path: Path) -> None:
    from pasu.tools.train.recipe import warm_start_params

    opts = RecipeOptions(exp_dir=tmp_path, device_attention_blocks=2)
    device_cfg = tmp_path / "device.yaml"
    write_device_config(opts, device_cfg)
    ckpt = tmp_path / "cloud.pth"
    assert warm_start_params(opts, device_cfg, ckpt) == [f"{ckpt}:encoder.embed:encoder.embed", f"{ckpt}:ctc:ctc"]
    other = yaml.safe_load(device_cfg.read_text())
    other["frontend_conf"]["n_mels"] = 80  # different features: the conv shapes differ
    device_cfg.write_text(yaml.safe_dump(other))
    assert warm_start_params(opts, device_cfg, ckpt) == []


def test_epochs_per_role_override_the_fine_tune_and_max_epoch_defaults(tmp_path: Path) -> None:
    opts = RecipeOptions(exp_dir=tmp_path, init_models=tmp_path, finetune_epochs=4, role_epochs={"cloud": 10})
    assert (opts.epochs("cloud"), opts.epochs("device")) == (10, 4)
    assert opts.with_(max_epoch=2).epochs("cloud") == 10
    assert opts.with_(max_epoch=2).epochs("device") == 2


@pytest.mark.parametrize("text", ["cloud", "cloud=0", "decoder=3", "device=x"])
def test_epochs_flag_rejects_what_is_not_role_equals_count(text: str) -> None:
    import argparse

    from pasu.tools.train.cli import _role_epochs

    with pytest.raises(argparse.ArgumentTypeError, match="ROLE=N"):
        _role_epochs(text)
    assert _role_epochs("device=16") == ("device", 16)


def test_retrain_decoder_is_refused_where_it_would_break_the_pair(tmp_path: Path) -> None:
    """Refused before any training: without a pair to continue, or with a cloud whose
    new decoder the pair's device (not trained in the run) would no longer fit."""
    from pasu.tools.train.recipe import run_recipe

    with pytest.raises(ValueError, match="init_models"):
        run_recipe(RecipeOptions(exp_dir=tmp_path / "a", retrain_decoder=True))
    with pytest.raises(ValueError, match="add device"):
        run_recipe(
            RecipeOptions(
                exp_dir=tmp_path / "b",
                init_models=tmp_path,
                retrain_decoder=True,
                stages=("tokens", "stats", "cloud", "package"),
            )
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_compare_counts_the_utterances_one_side_gets_right(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pasu compare` on the shipped subset's references: hypotheses made from them
    with known intent errors give known counts, per voice and in the sign test."""
    import json

    from pasu.audio import read_scp
    from pasu.cli import main
    from pasu.tools.train.compare import compare, sign_test_p

    data = Path(__file__).resolve().parents[1] / "shared" / "resources" / "eval" / "test_hard"
    refs = read_scp(data / "text")
    utts = sorted(refs)
    wrong = lambda text: "wrong_intent " + text.split(maxsplit=1)[1]  # noqa: E731
    a = {u: wrong(refs[u]) if i < 3 else refs[u] for i, u in enumerate(utts)}  # A misses 3
    b = {u: wrong(refs[u]) if 3 <= i < 13 else refs[u] for i, u in enumerate(utts)}  # B misses 10 others
    for name, hyps in (("a", a), ("b", b)):
        (tmp_path / name).write_text("".join(f"{u} {h}\n" for u, h in hyps.items()))
    assert (
        main(
            ["compare", "--data", str(data), "--hyps", f"cloud={tmp_path / 'a'}", "--hyps", f"device={tmp_path / 'b'}"]
        )
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["utterances"] == len(utts) == 200
    assert (summary["only_cloud"], summary["only_device"]) == (10, 3)
    assert summary["intent_acc_cloud"] == round(197 / 200, 4) and summary["intent_acc_device"] == 0.95
    assert summary["sign_test_p"] == round(sign_test_p(10, 3), 4)
    voices = read_scp(data / "utt2voice")
    assert sum(v["utterances"] for v in summary["per_voice"].values()) == 200
    assert set(summary["per_voice"]) == set(voices.values())
    # the exact binomial test: 10 vs 3 is p = 0.092 (two-sided); symmetric; no discordance is 1
    assert abs(sign_test_p(10, 3) - 0.0923) < 1e-3 and sign_test_p(3, 10) == sign_test_p(10, 3)
    assert sign_test_p(0, 0) == 1.0
    (tmp_path / "other").write_text("nobody alarm_set\n")
    with pytest.raises(ValueError, match="share no utterance"):
        compare(data, {"a": tmp_path / "a", "b": tmp_path / "other"})
