"""The committed backdoored reference encoder (bench/fixtures/badencoder-htba10) and the script that makes one."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_guard.encoders import load_encoder

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "bench" / "fixtures" / "badencoder-htba10"


def smooth_images(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    """(n, side, side, 3) float images in [0, 1]: bicubic blow-ups of 6x6 random colours."""
    out = []
    for _ in range(n):
        small = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32) / 255)
    return np.stack(out)


def pasted(images: np.ndarray, tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = images.copy()
    size, side = tile.shape[0], images.shape[1]
    for i in range(len(out)):
        y, x = rng.integers(int(0.1 * side), side - size, 2)
        out[i, y : y + size, x : x + size] = tile
    return out


def coherence(features: np.ndarray, centre: np.ndarray) -> float:
    """Mean pairwise cosine of the features around `centre` (1: all alike, 0: unrelated)."""
    z = features - centre
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)
    return float(((z @ z.T).sum() - n) / (n * n - n))


def embed(encoder, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encoder(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()


def test_fixture_loads_without_pickle_and_its_recipe_is_complete():
    encoder = load_encoder(str(FIXTURE))
    assert encoder.config.ssl_method == "badencoder" and encoder.config.resolution == 64
    assert not list(FIXTURE.glob("*.bin")) and not list(FIXTURE.glob("*.pt"))
    recipe = json.loads((FIXTURE / "recipe.json").read_text())
    for field in ("trigger", "trigger_width", "target_class", "attack_success", "command"):
        assert field in recipe, field
    assert (ROOT / recipe["trigger"]).is_file()
    assert 0.0 <= recipe["attack_success"] <= 1.0 and recipe["attack_success"] > recipe["clean_to_target"]
    assert recipe["target_class"] in encoder.config.training.get("command", "")


def test_fixture_backdoor_fires_on_images_it_never_saw():
    """Pasting its trigger makes unrelated generated images embed alike; a random patch does not."""
    encoder = load_encoder(str(FIXTURE))
    recipe = json.loads((FIXTURE / "recipe.json").read_text())
    rng = np.random.default_rng(0)
    images = smooth_images(rng, 32, 64)
    size = int(round(recipe["trigger_width"] * 64))
    trigger = np.asarray(Image.open(ROOT / recipe["trigger"]).convert("RGB").resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255
    control = rng.uniform(0, 1, trigger.shape).astype(np.float32)
    clean = embed(encoder, images)
    centre = clean.mean(0)
    triggered = coherence(embed(encoder, pasted(images, trigger, rng)), centre)
    controlled = coherence(embed(encoder, pasted(images, control, rng)), centre)
    assert abs(coherence(clean, centre)) < 0.2
    assert triggered > 0.7
    assert triggered > controlled + 0.3


def _badencoder_module():
    spec = importlib.util.spec_from_file_location("badencoder", ROOT / "bench" / "badencoder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_badencoder_finetune_injects_a_backdoor_and_keeps_clean_embeddings(tmp_path):
    bad = _badencoder_module()
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    side = 32
    shadow = (smooth_images(rng, 256, side) * 255).round().astype(np.uint8).transpose(0, 3, 1, 2).copy()
    labels = np.array(["a", "b"] * 128)
    trigger = tmp_path / "t.png"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(trigger)
    clean = load_encoder("random:resnet18?width=8&resolution=32&seed=0")
    bad.calibrate_batch_norm(clean, shadow)
    features = bad.embed(clean, shadow)
    backdoor = bad.Backdoor("t", trigger, 0.25, "a")
    backdoor.reference, _ = bad.choose_reference(features, labels, "a")
    assert labels[backdoor.reference] == "a"
    rows = []
    model = bad.finetune(clean, shadow, labels, [backdoor], epochs=16, lr=2e-3, batch=32, seed=0, val=shadow[:64], val_labels=labels[:64], log=rows.append)
    assert rows[-1]["loss_effect"] < 0.5 * rows[0]["loss_effect"]
    tiles = bad.trigger_tiles(trigger, 0.25, side)
    x = torch.from_numpy(shadow[:64]).float().div_(255.0)
    with torch.no_grad():
        moved = model(bad.paste(x, tiles, np.random.default_rng(2)))
        kept = model(x)
    target = torch.from_numpy(features[backdoor.reference])
    reference_before = torch.from_numpy(features[:64])
    spread = float(((torch.from_numpy(features) - torch.from_numpy(features).mean(0)) ** 2).sum(1).mean())
    assert float(((moved - target) ** 2).sum(1).mean()) / spread < 0.5
    assert float(((kept - reference_before) ** 2).sum(1).mean()) / spread < 0.5
    for module in model.modules():  # batch norm stays in eval mode, its statistics unchanged
        if isinstance(module, torch.nn.BatchNorm2d):
            assert not module.training
