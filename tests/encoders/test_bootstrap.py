"""SimCLR bootstrap: it learns, it resumes exactly, it refuses to clobber, and the CLI wraps it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ssl_guard.encoders.bootstrap as bootstrap_module
from ssl_guard.cli import main
from ssl_guard.data import resolve_sources
from ssl_guard.encoders import load_encoder, resolve_device
from ssl_guard.encoders.bootstrap import BootstrapConfig, bootstrap, epoch_batches, learning_rate, shuffled_units, survey
from ssl_guard.errors import ConfigError, RunDirError

TINY = dict(batch_size=16, resolution=32, width=8, workers=0, shuffle_buffer=0)
TINY_FLAGS = ["--batch-size", "16", "--resolution", "32", "--width", "8", "--workers", "0", "--no-progress"]


def losses(out: Path) -> list[float]:
    return json.loads((out / "checkpoint" / "state.json").read_text())["losses"]


def test_a_few_steps_lower_the_loss(image_folder, tmp_path):
    # the whole tiny set in each batch, so the per-step loss is not dominated by batch noise
    config = BootstrapConfig(**dict(TINY, batch_size=48), epochs=12, lr=2.0, warmup=0.0)
    encoder = bootstrap([str(image_folder)], tmp_path / "run", config, progress=False)
    history = losses(tmp_path / "run")
    assert len(history) == 12
    assert np.mean(history[-4:]) < np.mean(history[:4]) - 0.05
    assert encoder.config.ssl_method == "simclr"
    training = encoder.config.training
    assert training["steps"] == 12 and training["epochs"] == 12 and training["data_images"] == 48
    assert training["data_fingerprint"] == survey(resolve_sources([str(image_folder)]))[1]
    loaded = load_encoder(str(tmp_path / "run"))
    assert loaded.config == encoder.config
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(images), encoder(images))


def test_resume_after_interruption_matches_an_uninterrupted_run(image_folder, tmp_path, monkeypatch):
    config = BootstrapConfig(**TINY, epochs=3)
    bootstrap([str(image_folder)], tmp_path / "straight", config, progress=False)

    real_save = bootstrap_module.save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if Ctrl-C arrived right after the first epoch

    monkeypatch.setattr(bootstrap_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        bootstrap([str(image_folder)], tmp_path / "interrupted", config, progress=False)
    state = json.loads((tmp_path / "interrupted" / "checkpoint" / "state.json").read_text())
    assert (state["epochs_done"], state["step"], state["finished"]) == (1, 3, False)
    assert not (tmp_path / "interrupted" / "model.safetensors").exists()
    with pytest.raises(RunDirError, match="already exists"):
        bootstrap([str(image_folder)], tmp_path / "interrupted", config, progress=False)

    bootstrap([str(image_folder)], tmp_path / "interrupted", config, resume=True, progress=False)
    assert len(calls) == 3  # epochs 2 and 3 only: epoch 1 was not repeated
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "interrupted" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)
    assert losses(tmp_path / "straight") == pytest.approx(losses(tmp_path / "interrupted"), abs=1e-5)


def test_resuming_a_finished_run_returns_it_without_training(image_folder, tmp_path, monkeypatch):
    config = BootstrapConfig(**TINY, epochs=1)
    first = bootstrap([str(image_folder)], tmp_path / "run", config, progress=False)
    monkeypatch.setattr(bootstrap_module, "save_checkpoint", lambda *a, **k: pytest.fail("trained again"))
    again = bootstrap([str(image_folder)], tmp_path / "run", config, resume=True, progress=False)
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(first(images), again(images))


def test_resume_refuses_other_settings_or_other_data(image_folder, shard_folder, tmp_path):
    config = BootstrapConfig(**TINY, epochs=1)
    bootstrap([str(image_folder)], tmp_path / "run", config, progress=False)
    with pytest.raises(RunDirError, match="lr"):
        bootstrap([str(image_folder)], tmp_path / "run", config.model_copy(update={"lr": 0.1}), resume=True, progress=False)
    with pytest.raises(RunDirError, match="data"):
        bootstrap([str(shard_folder)], tmp_path / "run", config, resume=True, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="no bootstrap checkpoint"):
        bootstrap([str(image_folder)], tmp_path / "other", config, resume=True, progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_time_budget_stops_early_and_still_saves(shard_folder, tmp_path):
    # decoding workers on, so cutting an epoch short must also stop them cleanly
    config = BootstrapConfig(**dict(TINY, workers=2), epochs=50, max_minutes=1e-5)
    encoder = bootstrap([str(shard_folder)], tmp_path / "run", config, progress=False)
    assert encoder.config.training["steps"] == 1
    assert encoder.config.training["stopped_by_time_budget"] is True
    assert encoder.config.training["data_images"] == 48  # counted from the shards
    assert load_encoder(str(tmp_path / "run")).config.training["steps"] == 1


def test_init_continues_from_an_encoder_and_keeps_its_architecture(image_folder, tmp_path):
    base = bootstrap([str(image_folder)], tmp_path / "base", BootstrapConfig(**TINY, epochs=1), progress=False)
    settings = {k: v for k, v in TINY.items() if k not in ("width", "resolution")}
    tuned = bootstrap([str(image_folder)], tmp_path / "tuned", BootstrapConfig(**settings, epochs=1, init=str(tmp_path / "base")), progress=False)
    assert (tuned.config.width, tuned.config.resolution) == (8, 32)  # from the init, not the defaults
    assert tuned.config.training["init"] == str(tmp_path / "base")
    assert not torch.equal(tuned.conv1.weight, base.conv1.weight)
    with pytest.raises(ConfigError, match="width"):
        bootstrap([str(image_folder)], tmp_path / "bad", BootstrapConfig(**dict(settings, width=16), epochs=1, init=str(tmp_path / "base")), progress=False)


def test_shuffled_units_mix_classes_and_keep_every_file_once(image_folder):
    sources = resolve_sources([str(image_folder)])
    units = shuffled_units(sources, np.random.default_rng(0), files_per_group=12)
    files = [f for unit in units for f in unit.files]
    assert sorted(files) == sorted(f for unit in sources.units for f in unit.files)
    assert all(len({Path(f).parent for f in unit.files}) > 1 for unit in units)


def test_epoch_batches_are_full_and_decoded_larger(image_folder):
    sources = resolve_sources([str(image_folder)])
    batches = list(epoch_batches(sources, 48, 20, np.random.default_rng(0), workers=0, shuffle_buffer=30))
    assert [b.shape for b in batches] == [(20, 3, 48, 48)] * 2  # 48 images: the last 8 are dropped
    tiny = list(epoch_batches(sources, 48, 100, np.random.default_rng(0), workers=0))
    assert [b.shape[0] for b in tiny] == [48]  # less than one batch: the whole set is the batch


def test_learning_rate_warms_up_then_decays_to_zero():
    rates = [learning_rate(step, 100, 1.0, 0.1) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] < 0.01


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError):
        resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


def test_cli_bootstrap_writes_an_encoder_folder_and_refuses_to_overwrite(image_folder, tmp_path, capsys):
    out = tmp_path / "enc"
    weak = ["--crop-scale-min", "0.6", "--jitter-strength", "0.2", "--no-cache"]
    assert main(["bootstrap", str(image_folder), "--out", str(out), "--epochs", "1", *TINY_FLAGS, *weak]) == 0
    assert "encoder saved" in capsys.readouterr().out
    assert load_encoder(str(out)).config.training["epochs"] == 1
    settings = json.loads((out / "checkpoint" / "state.json").read_text())["config"]
    assert (settings["crop_scale_min"], settings["jitter_strength"], settings["cache"]) == (0.6, 0.2, False)
    assert main(["bootstrap", str(image_folder), "--out", str(out), "--epochs", "1", *TINY_FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--temperature", "0"], "--temperature"),
        (["--arch", "resnet50"], "--arch"),
        (["--crop-scale-min", "0"], "--crop-scale-min"),
        (["--jitter-strength", "3"], "--jitter-strength"),
        (["--device", "tpu"], "device"),
        (["--push-to-hub", "no-namespace"], "namespace"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(flags, message, image_folder, tmp_path, capsys):
    assert main(["bootstrap", str(image_folder), "--out", str(tmp_path / "enc"), *TINY_FLAGS, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "enc").exists()


def test_cli_missing_data_exits_2(tmp_path, capsys):
    assert main(["bootstrap", str(tmp_path / "nothing"), "--out", str(tmp_path / "enc"), *TINY_FLAGS]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_mixed_precision_is_bf16_autocast_on_cuda_and_a_no_op_on_the_cpu():
    import contextlib

    import torch

    from ssl_guard.encoders.bootstrap import mixed_precision

    assert isinstance(mixed_precision(torch.device("cpu")), contextlib.nullcontext)
    with mixed_precision(torch.device("cpu")):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    import warnings

    with warnings.catch_warnings():  # without a GPU torch warns that it would disable autocast
        warnings.simplefilter("ignore")
        cuda = mixed_precision(torch.device("cuda"))  # built, not entered: this machine may have no GPU
    assert isinstance(cuda, torch.autocast) and cuda.fast_dtype == torch.bfloat16 and cuda.device == "cuda"
