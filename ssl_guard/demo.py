"""The demo: a poisoned dataset made on the spot, an encoder bootstrapped on it, a scan, a score.

Everything is generated (procedural scenes and a generated patch trigger), so the demo needs no
download and no data of the user's. It runs the same code as `poison`, `bootstrap`, `scan` and
`eval`, in that order, into one folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssl_guard.errors import RunDirError


DEMO_TRIGGER = ("logo", 13 * 31)  # the trigger of the zoo's test dataset identical-1pct/13


@dataclass
class DemoResult:
    folder: Path
    scan: object
    metrics: dict


def run_demo(folder: Path, images_per_class: int = 250, classes: int = 8, rate: float = 0.02, bootstrap_epochs: int = 2, seed: int = 0, progress: bool = True) -> DemoResult:
    """Build `folder/{clean,poisoned,truth.csv,encoder,run}` and return the scan and its metrics.

    The poisons are `rate` of the dataset, all from one class, each carrying the same generated
    trigger (a zoo `logo`) scaled to 19% of the side (12 px). The images are made at the 64-px scan resolution,
    so the trigger's copies are pixel-exact; bench/RESULTS.md measures real photos, where the
    trigger is pasted before the scan's resize.
    """
    from ssl_guard import synthetic
    from ssl_guard.attacks.dataset import poison_dataset
    from ssl_guard.attacks.families import make_trigger
    from ssl_guard.attacks.patch import PatchAttack
    from ssl_guard.detect.pipeline import scan
    from ssl_guard.encoders.bootstrap import BootstrapConfig, bootstrap
    from ssl_guard.evaluation import evaluate_run

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise RunDirError(f"{folder} already exists", "choose another --out; the demo never overwrites a folder")
    clean, poisoned, truth = folder / "clean", folder / "poisoned", folder / "truth.csv"
    synthetic.write_folder(clean, per_class=images_per_class, classes=classes, size=64, seed=seed)
    # a trigger drawn from one of the zoo's families with a test-split seed (bench/zoo.py: seed 13
    # is a `logo` draw), fixed so that the demo shows the same thing on every machine
    attack = PatchAttack([(f"{DEMO_TRIGGER[0]}-{DEMO_TRIGGER[1]}", make_trigger(*DEMO_TRIGGER, size=64))], 0.19)
    poison_dataset([str(clean)], poisoned, truth, attack, target_class=synthetic.CLASS_NAMES[0], rate=rate, seed=seed, samples_per_shard=500, image_format="png")
    bootstrap([str(poisoned)], folder / "encoder", BootstrapConfig(epochs=bootstrap_epochs, resolution=64, width=32, batch_size=128, seed=seed), device="auto", progress=progress)
    # `mine` is the pre-training detector; the bootstrapped encoder supplies the semantic clusters
    # that tell a targeted attack from a benign repeat. (`poisoncam` needs an encoder that has
    # learned the backdoor, which a minutes-long CPU bootstrap has not.)
    result = scan([str(poisoned)], folder / "run", encoder=str(folder / "encoder"), method="mine", seed=seed, progress=progress)
    return DemoResult(folder, result, evaluate_run(folder / "run", truth))
