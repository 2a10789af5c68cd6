"""Model loading: ESPnet layouts, safe weights, and errors that name the file."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from pasu.models import ModelLoadError, find_model_files, load_model


def test_loads_directory_config_and_pth(tiny_model_dirs):
    d = tiny_model_dirs["conformer"]
    for spec in (d, d / "config.yaml", d / "model.pth"):
        m = load_model(spec)
        assert m.vocab_size == len(m.token_list) == 31
        assert m.token_list[0] == "<blank>" and m.eos == m.sos == 30
        assert m.name == "tiny-conformer"


def test_model_zoo_layout(tiny_model_dirs, tmp_path):
    """exp/<name>/config.yaml + valid.acc.ave.pth, with a stats path relative to the unpack root."""
    src = tiny_model_dirs["branchformer"]
    exp = tmp_path / "zoo" / "exp" / "asr_train_tiny"
    exp.mkdir(parents=True)
    (tmp_path / "zoo" / "exp" / "stats").mkdir()
    shutil.copy(src / "feats_stats.npz", tmp_path / "zoo" / "exp" / "stats" / "feats_stats.npz")
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    cfg["normalize_conf"]["stats_file"] = "exp/stats/feats_stats.npz"
    (exp / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copy(src / "model.pth", exp / "valid.acc.ave.pth")
    files = find_model_files(tmp_path / "zoo")
    assert files.weights.name == "valid.acc.ave.pth"
    m = load_model(tmp_path / "zoo")
    assert m.config["normalize_conf"]["stats_file"].endswith("exp/stats/feats_stats.npz")


def test_missing_files_are_named(tiny_model_dirs, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config not found"):
        load_model(tmp_path / "empty")
    d = tmp_path / "noweights"
    shutil.copytree(tiny_model_dirs["conformer"], d)
    (d / "model.pth").unlink()
    with pytest.raises(ModelLoadError, match="no \\*.pth"):
        load_model(d)
    d2 = tmp_path / "nostats"
    shutil.copytree(tiny_model_dirs["conformer"], d2)
    (d2 / "feats_stats.npz").unlink()
    with pytest.raises(ModelLoadError, match="feats_stats.npz"):
        load_model(d2)


def test_mismatched_weights_are_refused(tiny_model_dirs, tmp_path):
    d = tmp_path / "mismatch"
    shutil.copytree(tiny_model_dirs["conformer"], d)
    shutil.copy(tiny_model_dirs["branchformer"] / "model.pth", d / "model.pth")
    with pytest.raises(ModelLoadError, match="does not match"):
        load_model(d)


def test_poisoned_checkpoint_is_refused_not_run(poisoned_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = poisoned_model_dir
    with pytest.raises(ModelLoadError, match="cannot load weights"):
        load_model(d)
    assert not (tmp_path / "PWNED").exists()


def test_malformed_config(tmp_path, tiny_model_dirs):
    d = tmp_path / "bad"
    shutil.copytree(tiny_model_dirs["conformer"], d)
    (d / "config.yaml").write_text("encoder: [unclosed\n")
    with pytest.raises(ModelLoadError, match="malformed YAML"):
        load_model(d)
    (d / "config.yaml").write_text("just: a dict\n")
    with pytest.raises(ModelLoadError, match="not an ESPnet training config"):
        load_model(d)


def test_espnet_loads_what_pasu_loads(tiny_models):
    """The same files work with ESPnet's own loader (Speech2Text's path)."""
    from espnet2.tasks.asr import ASRTask

    m = tiny_models["conformer"]
    model, _ = ASRTask.build_model_from_file(m.resolved_config_path(), m.files.weights, "cpu")
    ours = dict(m.model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, ours[name]), name
