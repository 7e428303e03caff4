"""Classify-all stage (stage 6, docs/architecture.md): the poison classifier of PatchSearch (CVPR 2023, §3.5).

The search scores only a few images per cluster. To reach every image, small CNNs learn "does
this image carry a bank trigger": positives are ordinary images with a bank window pasted in at a
random size and spot, negatives the same images untouched. An ensemble (logits averaged) then reads
every image once. The net is ResNet-10-shaped (one BasicBlock per stage) at a narrow width and a
32-48 px input, so it trains in well under a CPU-minute per model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_guard.detect.flip import pad_patches, paste_patches, random_corners

# Rows (n,) sorted -> (n, 3, R, R) float in [0, 1] on the device.
LoadRows = Callable[[np.ndarray], torch.Tensor]

# Pasted bank windows are resized by these factors of their own side (PatchSearch resizes its 60 px
# windows to 20-80 px, i.e. 0.33-1.33; ours are already trigger-sized, so the range is narrower).
PASTE_SCALES = (0.75, 0.9, 1.0, 1.15, 1.3, 1.5)


def classifier_input(resolution: int) -> int:
    """Input side of the poison classifier: the scan resolution clipped to 32-48 px.

    48 px with a stride-2 stem costs half of 32 px with a stride-1 stem (measured: 35 against 77 ms
    per step of 32 images on 2 CPU cores) and keeps a 12 px trigger of a 64 px scan at 9 px.
    """
    return int(min(48, max(32, resolution)))


def default_steps(n: int) -> int:
    """SGD steps per model: 100 + n/50, clipped to 100-500 (PatchSearch: 2,000 for 126k images)."""
    return int(min(500, max(100, 100 + n // 50)))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class PoisonNet(nn.Module):
    """ResNet-10 (BasicBlock [1, 1, 1, 1]) of base width `width`, global mean and max pooling:
    (B, 3, S, S) in [0, 1] -> (B,) logits.

    The stem is a 3×3 convolution with stride 2 for inputs above 32 px and stride 1 otherwise, so a
    trigger of a few pixels is not lost before the first block.
    """

    def __init__(self, width: int = 16, input_size: int = 32) -> None:
        super().__init__()
        stride = 2 if input_size > 32 else 1
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        widths = [width, 2 * width, 4 * width, 8 * width]
        blocks, cin = [], width
        for i, w in enumerate(widths):
            blocks.append(_Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(2 * cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Centre the input around zero; the statistics of the scan's images are not known here.
        h = self.blocks(self.stem(x * 2 - 1))
        # Max pooling beside the mean: a trigger covers a few cells of the last map, and averaging
        # over all of them dilutes it (with the mean alone, 80 steps did not learn an 8 px trigger).
        return self.fc(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)).squeeze(1)


def bank_variants(bank: list[torch.Tensor], resolution: int) -> list[torch.Tensor]:
    """Each bank window (3, h, w) resized by every factor of PASTE_SCALES, sides kept in 3..R/2."""
    out = []
    for patch in bank:
        h, w = patch.shape[1:]
        for s in PASTE_SCALES:
            size = (int(min(resolution // 2, max(3, round(h * s)))), int(min(resolution // 2, max(3, round(w * s)))))
            out.append(F.interpolate(patch[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1))
    return out


def paste_bank(x: torch.Tensor, variants: list[torch.Tensor], positive: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x (B, 3, R, R) with a random bank variant pasted at a random spot where `positive` (B,) is True."""
    idx = positive.nonzero().flatten()
    if len(idx) == 0 or not variants:
        return x
    choice = torch.randint(len(variants), (len(idx),), generator=generator)
    patches, sizes = pad_patches([_random_crop(variants[int(i)], generator) for i in choice])
    margin = max(1, x.shape[-1] // 20)  # PatchSearch keeps 10 px of 224 free at the border
    corners = random_corners(sizes, x.shape[-1], generator, margin)
    out = x.clone()
    out[idx] = paste_patches(x[idx], patches, sizes, corners)
    return out


def _random_crop(patch: torch.Tensor, generator: torch.Generator, least: float = 0.8) -> torch.Tensor:
    """A random sub-window of (3, h, w) `patch`, each side 80-100% of the original (60% lost too
    much of a bare 8 px trigger: held-out AUROC 0.53 against 0.88 uncropped after 80 steps).

    A bank window holds its host's background around the trigger; with one or a few windows the
    classifier otherwise learns that background (measured on the generated test set: the exact
    trigger pasted alone scored 0.01 while its bank window scored 0.998). Cropping varies the
    border so only what all crops share, the trigger, predicts the label.
    """
    h, w = patch.shape[1:]
    ch = max(1, round(h * (least + (1 - least) * float(torch.rand(1, generator=generator)))))
    cw = max(1, round(w * (least + (1 - least) * float(torch.rand(1, generator=generator)))))
    y0 = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    x0 = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    return patch[:, y0 : y0 + ch, x0 : x0 + cw]


def to_input(x: torch.Tensor, input_size: int) -> torch.Tensor:
    """Resize (B, 3, R, R) to the classifier's (B, 3, S, S)."""
    if x.shape[-1] == input_size:
        return x
    return F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)


def train_classifiers(
    load: LoadRows,
    pool: np.ndarray,
    bank: list[torch.Tensor],
    resolution: int,
    models: int = 5,
    steps: int = 300,
    batch: int = 32,
    lr: float = 2e-3,
    width: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_step: Callable[[], None] | None = None,
) -> list[PoisonNet]:
    """Train `models` PoisonNets, each from its own seed, on images of `pool` (rows believed clean).

    Each step draws `batch` rows; each becomes a positive with probability 0.5 (a bank window
    pasted in, randomly cropped). AdamW with a cosine schedule. Returns the nets in eval mode.
    """
    size = classifier_input(resolution)
    variants = bank_variants(bank, resolution)
    nets = []
    for m in range(models):
        gen = torch.Generator().manual_seed(seed * 1000 + m)
        rng = np.random.default_rng(seed * 1000 + m)
        net = PoisonNet(width, size).to(device)
        # AdamW rather than PatchSearch's SGD (lr 0.01, 2,000 steps): with a few hundred steps
        # SGD from scratch had not separated pasted triggers yet in our runs.
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
        net.train()
        for _ in range(steps):
            rows = np.sort(rng.choice(pool, size=min(batch, len(pool)), replace=len(pool) < batch))
            x = load(rows)
            positive = (torch.rand(len(rows), generator=gen) < 0.5).to(x.device)
            x = paste_bank(x, variants, positive, gen)
            flip = (torch.rand(len(rows), generator=gen) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = F.binary_cross_entropy_with_logits(net(to_input(x, size)), positive.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if on_step:
                on_step()
        nets.append(net.eval())
    return nets


@torch.no_grad()
def predict(nets: list[PoisonNet], x: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B,) probability that each image of x (B, 3, R, R) carries a trigger: sigmoid of mean logit."""
    size = classifier_input(resolution)
    inp = to_input(x, size)
    return torch.stack([net(inp) for net in nets]).mean(dim=0).sigmoid()
