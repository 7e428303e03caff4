"""Step 6: every image scored against the bank, with thresholds from the scan's own null.

A template is matched densely in every image (the normalised squared residual of the best
window). Almost every image is unrelated to a given pattern, so the bulk of the residuals is the
null: its median and spread (MAD) are measured on the scan itself, and an image is a host when its
residual is further below the bulk than any of the N images would be by chance (Bonferroni on a
log-normal fit: z = Φ⁻¹(1 − α/N)). A pasted patch's copies sit far below that line; a natural
look-alike's matches form a continuum that runs into it, which `lookalike_ratio` measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F

from ssl_guard.detect.mine.edits import as_float, smooth


def box_sums(values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sum of `values` (B, C, H, W) over every `height` x `width` window: (B, C, H - height + 1,
    W - width + 1), from an integral image in float64 (exact to float32 rounding, and about 10x
    cheaper on a CPU than an average pool with a large kernel)."""
    total = F.pad(values.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    boxes = total[..., height:, width:] - total[..., :-height, width:] - total[..., height:, :-width] + total[..., :-height, :-width]
    return boxes.to(values.dtype)


def match_residual(images: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Normalised residual of `template` at every position of every image.

    `residual = |P - T|^2 / |T - mean(T)|^2`, with P the image window: 0 for an exact copy, about
    1 or more for unrelated content. Not scale-invariant on purpose: an opaque pasted patch keeps
    its pixel values, while natural look-alikes only share a shape.

    Args:
        images: (B, 3, H, W) float in [0, 1].
        template: (3, h, w) float in [0, 1].

    Returns:
        (B, H - h + 1, W - w + 1) residuals.
    """
    return _residuals_of(images, template[None])[:, 0]


# FFT correlation costs about the same whatever the template's size; a direct convolution grows
# with h * w * (H - h + 1) * (W - w + 1). Measured on one thread (256 images, 4 phases of a
# square template; two other jobs on the 2-core machine; bench/RESULTS.md, "Verification's
# sample made once"): at 64 px the FFT is faster from about 18 multiply-adds per image pixel (a
# 5 x 5 template: 1.41x; 4 x 4: 0.87x), at 108 px from about 40 (8 x 8: 1.26x; 6 x 6: 0.97x).
# Above FFT_FROM the FFT is used: the first line was at 64 (a 14 x 15 template, session
# 2026-12-03 e), which kept templates up to 8 x 8 on the slower direct path at 64 px.
FFT_FROM = 24


def fft_size(n: int) -> int:
    """The smallest length >= `n` whose prime factors are all 2, 3, 5 or 7: an FFT of a prime
    length is several times slower than one of a nearby smooth length (the native view's canvas is
    often such a length, e.g. 107 px: measured on one thread, 256 images with a 12 x 12 template,
    0.44 s at 107 against 0.25 s at 108)."""
    size = max(1, n)
    while True:
        m = size
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return size
        size += 1


def cross_correlation(images: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """sum_c sum_ij images[b, c, y + i, x + j] * templates[k, c, i, j] at every valid position:
    (B, K, H - h + 1, W - w + 1), as `F.conv2d(images, templates)` computes it. Large templates
    go through the FFT (a circular correlation of the zero-padded image with the zero-padded
    template is the valid one wherever the template does not wrap around, i.e. at every valid
    position), at a smooth length (`fft_size`) at least the image's."""
    (height, width), (h, w) = images.shape[2:], templates.shape[2:]
    if h * w * (height - h + 1) * (width - w + 1) < FFT_FROM * height * width:
        return F.conv2d(images, templates)
    rows, cols = fft_size(height), fft_size(width)
    padded = F.pad(templates, (0, cols - w, 0, rows - h))
    framed = images if (rows, cols) == (height, width) else F.pad(images, (0, cols - width, 0, rows - height))
    image_spectrum, template_spectrum = torch.fft.rfft2(framed), torch.fft.rfft2(padded).conj()
    # summed over channels one at a time: the same products as an einsum, but the result is
    # contiguous, which the inverse FFT reads faster (measured 0.031 s against 0.037 s for
    # 256 images at 64 px and 4 templates, one thread)
    spectrum = image_spectrum[:, 0, None] * template_spectrum[None, :, 0]
    for c in range(1, image_spectrum.shape[1]):
        spectrum += image_spectrum[:, c, None] * template_spectrum[None, :, c]
    return torch.fft.irfft2(spectrum, s=(rows, cols))[:, :, : height - h + 1, : width - w + 1]


def positions_in(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each of `wanted` lies in `rows` (distinct), -1 where it is not there."""
    if len(rows) == 0:
        return np.full(len(wanted), -1, np.int64)
    order = np.argsort(rows, kind="stable")
    at = np.clip(np.searchsorted(rows, wanted, sorter=order), 0, len(rows) - 1)
    return np.where(rows[order[at]] == wanted, order[at], -1)


class ProbeCache:
    """The float and smoothed pixels of a fixed set of rows (verification's random sample, matched
    against every candidate's templates), computed once instead of once per template tested, on
    first use (a scan with no candidate to verify never makes them). `residuals` takes the cached
    rows' pixels from it, in any order and mixed with other rows, and computes the rest. Memory:
    `nbytes` (3,000 images at 64 px: 295 MB)."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, device: torch.device, batch_size: int = 256):
        self.images, self.rows, self.device, self.batch_size = images, np.asarray(rows, np.int64), device, batch_size
        self.pixels: torch.Tensor | None = None
        self.smoothed: torch.Tensor | None = None

    @staticmethod
    def nbytes(count: int, image_shape: tuple[int, ...]) -> int:
        """What the cache of `count` images of `image_shape` (C, H, W) holds: two float32 copies."""
        return 2 * 4 * count * int(np.prod(image_shape))

    def _fill(self) -> None:
        chunks = [as_float(self.images[self.rows[s : s + self.batch_size]], self.device) for s in range(0, len(self.rows), self.batch_size)]
        self.pixels = torch.cat(chunks) if chunks else torch.zeros((0, *self.images.shape[1:]), device=self.device)
        self.smoothed = torch.cat([smooth(c) for c in chunks]) if chunks else self.pixels.clone()

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Each row's place in the cache, -1 where it is not cached."""
        return positions_in(self.rows, np.asarray(rows, np.int64))

    def batch(self, rows: np.ndarray, smoothed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`rows` as float pixels, and smoothed if asked: cached rows taken from the cache, the
        others computed."""
        if self.pixels is None:
            self._fill()
        where = self.positions(rows)
        cached = where >= 0
        if cached.all():
            index = torch.from_numpy(where).to(self.pixels.device)
            return self.pixels.index_select(0, index), (self.smoothed.index_select(0, index) if smoothed else None)
        pixels = torch.empty((len(rows), *self.pixels.shape[1:]), dtype=self.pixels.dtype, device=self.pixels.device)
        blurred = torch.empty_like(pixels) if smoothed else None
        hit, miss = torch.from_numpy(np.nonzero(cached)[0]).to(pixels.device), np.nonzero(~cached)[0]
        if len(hit):
            index = torch.from_numpy(where[cached]).to(pixels.device)
            pixels[hit] = self.pixels.index_select(0, index)
            if smoothed:
                blurred[hit] = self.smoothed.index_select(0, index)
        extra = as_float(self.images[np.asarray(rows)[miss]], self.device)
        pixels[torch.from_numpy(miss).to(pixels.device)] = extra
        if smoothed:
            blurred[torch.from_numpy(miss).to(pixels.device)] = smooth(extra)
        return pixels, blurred


def _residuals_of(images: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """`match_residual` of K templates of one size (K, 3, h, w) at once: (B, K, H - h + 1,
    W - w + 1). One correlation with the templates as output channels and one window-energy map
    serve them all."""
    th, tw = templates.shape[2:]
    window_energy = box_sums((images * images).sum(1, keepdim=True), th, tw)
    cross = cross_correlation(images, templates)
    template_energy = (templates * templates).sum((1, 2, 3))
    spread = ((templates - templates.mean(dim=(2, 3), keepdim=True)) ** 2).sum((1, 2, 3)).clamp_min(1e-6)
    return ((window_energy - 2 * cross + template_energy[None, :, None, None]) / spread[None, :, None, None]).clamp_min(0)


def phases(template: torch.Tensor) -> torch.Tensor:
    """The template and its copies shifted by half a pixel right, down and both (bilinear, one
    pixel cropped): (4, 3, h-1, w-1). A copy pasted at another sub-pixel phase matches one of them
    as closely as an aligned copy matches the template."""
    t = template
    shifts = [t[:, :-1, :-1], (t[:, :-1, :-1] + t[:, :-1, 1:]) / 2, (t[:, :-1, :-1] + t[:, 1:, :-1]) / 2, (t[:, :-1, :-1] + t[:, 1:, 1:] + t[:, :-1, 1:] + t[:, 1:, :-1]) / 4]
    return torch.stack(shifts)


def phase_residual(images: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """The smallest `match_residual` over the four half-pixel phases of `template` at every
    position: (B, H - h + 2, W - w + 2). The phases share their size, so they are matched in one
    convolution: about 3-4x faster on a CPU than one phase at a time (bench/RESULTS.md, "Cost, and
    the whole dev split")."""
    return _residuals_of(images, phases(template)).amin(1)


SMOOTHED_FROM = 6


def matched_form(template: torch.Tensor, smoothed: bool) -> tuple[torch.Tensor, bool]:
    """What is matched for `template`: as it is, or (`smoothed`) its 3 x 3-smoothed pixels with
    the one-pixel border cut (a border pixel's blur would mix in host content), compared with the
    smoothed images. A template under `SMOOTHED_FROM` px on a side is always matched as it is
    (cut, it would be too small to carry structure).

    Neither form is better for every pattern (docs/mine.md, "Matching on smoothed pixels"): copies
    of a fine noise texture, resampled at other sub-pixel phases and JPEG-coded in other hosts,
    differ pixel for pixel by a third of the pattern's own variance and match only smoothed; a
    small QR code loses to smoothing the very structure that sets it apart from natural content.
    The detector tests both and keeps the one the scan's own null separates better. Returns the
    matched template and whether it is the smoothed form (its windows' top-left corners are then
    one pixel inside the template's)."""
    if not smoothed or min(template.shape[1:]) < SMOOTHED_FROM:
        return template, False
    return smooth(template[None])[0, :, 1:-1, 1:-1].contiguous(), True


def form_flags(template: torch.Tensor) -> list[bool]:
    """The forms a template is tested in (`matched_form`): as it is and smoothed, or only as it
    is under `SMOOTHED_FROM` px a side (both forms would then be the same)."""
    return [False, True] if min(template.shape[1:]) >= SMOOTHED_FROM else [False]


def residuals(images: np.ndarray, rows: np.ndarray, templates: list[torch.Tensor], batch_size: int, device: torch.device, advance: Callable[[int], None] = lambda k: None, smoothed: list[bool] | None = None, photos: np.ndarray | None = None, cache: ProbeCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best residual of each template in each image of `rows`: (len(rows), T) float32, and the
    best window's top-left corner (len(rows), T, 2) int32 as (y, x), in the template's own
    coordinates (the smoothed form's offset undone, clipped to the image). `smoothed[t]`: match
    template t in its smoothed form (`matched_form`); default: every template as it is.
    `photos` (N, 4) x0, y0, w, h: only windows on the image's photo count (`on_photo`).
    `cache`: the pixels of some of `rows`, computed once (`ProbeCache`); same results."""
    out = np.full((len(rows), len(templates)), np.inf, np.float32)
    corner = np.zeros((len(rows), len(templates), 2), np.int32)
    forms = [matched_form(t.to(device), bool(smoothed[i]) if smoothed is not None else False) for i, t in enumerate(templates)]
    want_smoothed = any(f[1] for f in forms)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        if cache is not None:
            pixels, smoothed_pixels = cache.batch(chunk, want_smoothed)
        else:
            pixels = as_float(images[chunk], device)
            smoothed_pixels = smooth(pixels) if want_smoothed else None
        for t, (template, is_smoothed) in enumerate(forms):
            residual = phase_residual(smoothed_pixels if is_smoothed else pixels, template)
            if photos is not None:
                residual = residual.masked_fill(~on_photo(photos[chunk], residual.shape, template.shape[1:], int(is_smoothed), residual.device), float("inf"))
            b, h, w = residual.shape
            value, flat = residual.reshape(b, -1).min(dim=1)
            out[start : start + len(chunk), t] = value.cpu().numpy()
            shift = 1 if is_smoothed else 0
            corner[start : start + len(chunk), t, 0] = np.maximum((flat // w).cpu().numpy() - shift, 0)
            corner[start : start + len(chunk), t, 1] = np.maximum((flat % w).cpu().numpy() - shift, 0)
        advance(len(chunk))
    return out, corner


def on_photo(photos: np.ndarray, shape: tuple[int, int, int], size: tuple[int, int], shift: int, device) -> torch.Tensor:
    """(B, H', W') bool: the match positions whose window (a template of `size`, its top-left at
    the position plus `shift`) lies wholly on the image's photo, `photos` (B, 4) x0, y0, w, h
    (along a side where the photo is smaller than the template: the window's centre on it).

    On the native view (`ssl_guard.detect.native`) each photo is padded by reflecting it, so a
    trigger near an edge has a mirrored twin in the padding, and a photo narrower than the padding
    has translated copies there; their boxes would map to nothing in the square cache. And a
    window across the fold is mirror-symmetric about it, a structure every photo of that size
    shares at that place: on test `opaque-realsize-1pct/10` two such patterns at canvas corners
    were accepted with 10 and 7 hosts (windows only centred on the photo), 17 clean photos
    flagged. A window on the photo sees neither."""
    _, rows, cols = shape
    h, w = size
    place = torch.as_tensor(np.asarray(photos, dtype=np.float32).reshape(-1, 4), device=device)

    def along(count: int, extent: int, low: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        start = torch.arange(count, device=device, dtype=torch.float32)[None] + shift
        centre = start + extent / 2.0
        whole = (start >= low) & (start + extent <= low + length)
        return torch.where(length >= extent, whole, (centre >= low) & (centre <= low + length))

    in_y = along(rows, h, place[:, 1:2], place[:, 3:4])
    in_x = along(cols, w, place[:, 0:1], place[:, 2:3])
    return in_y[:, :, None] & in_x[:, None, :]


def _agreement_reference(template: torch.Tensor, tolerance: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The smoothed template (its one-pixel border cut, where an image's blur mixes in host content;
    not under `SMOOTHED_FROM` px), the mask of its structured pixels (those that differ from its
    mean colour by the tolerance or more), and the border cut."""
    h, w = template.shape[1:]
    cut = 1 if min(h, w) >= SMOOTHED_FROM else 0
    reference = smooth(template[None])[0, :, cut : h - cut, cut : w - cut]
    structured = (reference - reference.mean(dim=(1, 2), keepdim=True)).abs().mean(0) >= tolerance
    return reference, structured, cut


def agreeing_share(images: np.ndarray, rows: np.ndarray, corners: np.ndarray, template: torch.Tensor, tolerance: float) -> np.ndarray:
    """How well each matched window agrees with `template` pixel for pixel: (len(rows), 2), the
    share of all its pixels, and of the template's structured pixels, that agree within the scan's
    resampling `tolerance`, both 3 x 3-smoothed as in step 4 (`_agreement_reference`).
    `corners`: (len(rows), 2) y, x of each window's top-left, as `residuals` returns them."""
    h, w = template.shape[1:]
    reference, structured, cut = _agreement_reference(template, tolerance)
    out = np.zeros((len(rows), 2), np.float32)
    for start in range(0, len(rows), 512):
        pixels = smooth(as_float(images[rows[start : start + 512]]))
        size = pixels.shape[-1]
        for i, (y, x) in enumerate(corners[start : start + 512].tolist()):
            y0, x0 = min(max(0, y), size - h) + cut, min(max(0, x), size - w) + cut
            agree = (pixels[i, :, y0 : y0 + h - 2 * cut, x0 : x0 + w - 2 * cut] - reference).abs().mean(0) < tolerance
            out[start + i] = (float(agree.float().mean()), float(agree[structured].float().mean()) if structured.any() else 0.0)
    return out


def flat_noise_floor(template: torch.Tensor, tolerance: float, smoothed: bool) -> float:
    """The lowest residual a window of flat colour plus resampling noise can reach against
    `template` in the form it is matched (`matched_form`).

    A flat window of the template's mean colour scores exactly 1. Noise of the scan's resampling
    `tolerance` on every pixel (norm e = tolerance * sqrt(pixels)) lowers that at most to
    (1 - e / sqrt(S))^2, with S the template's own energy about its mean, when the noise happens
    to line up with the template. A contrasted template (sqrt(S) many times e) keeps that floor
    near 1, above any line its null gives; a pale or smooth one (a plate with a faint glyph: its
    pixels differ from its mean by 1.6 times the tolerance on dev `opaque-1pct/22`) has a floor
    near 0, and its line can admit textured windows of about its colour (3 grass windows there,
    at residuals 0.60-0.93 under a line of 0.85-1.0). 0 when the noise outweighs the template."""
    form, _ = matched_form(template, smoothed)
    energy = float(((form - form.mean(dim=(1, 2), keepdim=True)) ** 2).sum())
    ratio = tolerance * math.sqrt(form.numel()) / math.sqrt(max(energy, 1e-12))
    return (1.0 - ratio) ** 2 if ratio < 1.0 else 0.0


def has_structure(template: torch.Tensor, tolerance: float) -> bool:
    """Whether any of `template`'s (smoothed) pixels differs from its mean colour by the scan's
    resampling `tolerance` or more: then a flat patch of that colour cannot agree with most of
    its structured pixels (`keep_agreeing`)."""
    return bool(_agreement_reference(template, tolerance)[1].any())


def keep_agreeing(images: np.ndarray, rows: np.ndarray, residual: np.ndarray, corners: np.ndarray, template: torch.Tensor, tolerance: float, threshold: float) -> np.ndarray:
    """`residual` with every window under `threshold` that is not a copy set to infinity: a copy
    agrees with the template (`agreeing_share`) on more than half of all its pixels and on more
    than half of the template's structured pixels (which a flat patch of the template's mean
    colour never does).

    Used for smooth templates (a gradient, a plate with a pale glyph), whose line can reach a
    flat patch's residual of 1: the residual is divided by the template's own small variance, so
    natural windows of about its colour score little more than its copies."""
    residual = residual.copy()
    below = np.nonzero(residual < threshold)[0]
    if len(below):
        share = agreeing_share(images, rows[below], corners[below], template, tolerance)
        residual[below[(share[:, 0] <= 0.5) | (share[:, 1] <= 0.5)]] = np.inf
    return residual


def _log_null(residual: np.ndarray, alpha: float, total: int) -> tuple[np.ndarray, float, float, float]:
    """The log residuals, their median and MAD spread (the null's log-normal fit), and the
    Bonferroni z for one false host in `total` images at level `alpha`."""
    logs = np.log(np.maximum(residual, 1e-6))
    median = float(np.median(logs))
    spread = float(1.4826 * np.median(np.abs(logs - median))) or 1e-6
    return logs, median, spread, NormalDist().inv_cdf(1 - alpha / max(2, total))


def null_threshold(residual: np.ndarray, alpha: float, total: int | None = None, others: np.ndarray | None = None) -> dict[str, float]:
    """The host threshold of one pattern from its residuals over a random sample of a scan.

    Args:
        residual: the pattern's best residual in each image of a random sample (or of the scan).
        alpha: chance of one false host in the whole scan.
        total: images in the scan (default: the sample's size); the Bonferroni level is α/total.
        others: the residuals of images matched beyond the sample (a candidate's own group):
            counted as hosts below the threshold, left out of the null.

    Returns the threshold, the bulk's median and spread (log residual), and the lookalike ratio:
    the images just above the threshold beyond what the fitted null predicts there, scaled to the
    scan, per host. A pasted patch leaves that band as empty as the null says; natural
    look-alikes fill it.
    """
    total = total or len(residual)
    logs, median, spread, z = _log_null(residual, alpha, total)
    null = NormalDist()
    cut = median - z * spread
    hosts = int((logs < cut).sum()) + (int((np.asarray(others) < math.exp(cut)).sum()) if others is not None else 0)
    # the band just above the threshold (z down to 0.75 z below the bulk): what the null predicts
    # there is next to nothing; images beyond that prediction are look-alikes
    band = int(((logs >= cut) & (logs < median - 0.75 * z * spread)).sum())
    expected = len(residual) * (null.cdf(-0.75 * z) - null.cdf(-z))
    excess = max(0.0, band - expected) * total / max(1, len(residual))
    return {"threshold": float(math.exp(cut)), "bulk_median": float(math.exp(median)), "bulk_spread": spread, "z": float(z), "hosts": float(hosts), "lookalike_ratio": excess / max(hosts, 1)}


def screen_threshold(residual: np.ndarray, alpha: float, total: int, full_sample: int, margin: float = 3.0) -> float:
    """A looser host line, for a screen on a random subset of a template's full-test sample.

    `null_threshold`'s line is median − z · spread of the log residuals. Fitted on m images, the
    median and the MAD's spread have sampling errors of about 1.2533 σ / √m and 1.1664 σ / √m (a
    normal bulk's asymptotics), so the line's error is σ · √(1.571 + 1.3605 z²) / √m. The screen's
    m images are a subset of the full test's `full_sample` = M, so the two lines differ by an
    error of that size with 1/m − 1/M in place of 1/m; the screen's line lies `margin` such errors
    above the full test's, and an image under the full test's line is under the screen's unless
    the two fits differ by more than three of their standard errors. Used to reject a seed early,
    never to accept one (`detector._screen`)."""
    _, median, spread, z = _log_null(residual, alpha, total)
    per_image = math.sqrt(1.571 + 1.3605 * z * z)
    error = per_image * math.sqrt(max(0.0, 1.0 / max(1, len(residual)) - 1.0 / max(1, full_sample)))
    return float(math.exp(median - (z - margin * error) * spread))


def host_threshold(residual: np.ndarray, threshold: float, flat: float = 1.0, grid: int = 2048) -> dict[str, float]:
    """Widen an accepted pattern's threshold to the Bayes line between its hosts and the null.

    The Bonferroni line of `null_threshold` keeps false hosts near zero, but copies that a resize
    or JPEG coded a little worse sit just above it while every clean image is far away (test
    split `identical-1pct/12`: 3 of 39 copies at residual 0.59-0.69, the line at 0.57, the nearest
    clean photo at 0.91). Once every image of the scan is scored, two groups can be fitted on the
    scan itself: the null (log-median and MAD of the images above the line) and the hosts (the
    log-mean and standard deviation of those below it; truncated at the line, so too narrow, which
    makes this widening conservative), with the hosts' share as prior. The threshold moves up to
    where the null becomes likelier than a host (posterior 0.5), never down, and never to `flat`
    or beyond: a flat window of the template's mean colour scores exactly 1 (`pattern_verdict`).

    Args:
        residual: the pattern's best residual in every image of the scan.
        threshold: the pattern's Bonferroni threshold.

    Returns the threshold, the Bonferroni one it started from, and the two fitted groups (log).
    """
    logs = np.log(np.maximum(np.asarray(residual, np.float64), 1e-6))
    cut = math.log(threshold)
    hosts = logs < cut
    out = {"threshold": float(threshold), "bonferroni_threshold": float(threshold)}
    if hosts.sum() < 3 or hosts.all():
        return out
    bulk = logs[~hosts]
    null_median = float(np.median(bulk))
    null_spread = float(1.4826 * np.median(np.abs(bulk - null_median)))
    host_mean, host_spread = float(logs[hosts].mean()), float(logs[hosts].std(ddof=1))
    out.update(null_log_median=null_median, null_log_spread=null_spread, host_log_mean=host_mean, host_log_spread=host_spread)
    top = min(math.log(flat), null_median)
    if null_spread <= 0 or host_spread <= 0 or top <= cut:
        return out
    prior = hosts.mean()
    levels = np.linspace(cut, top, grid, endpoint=False)
    log_host = math.log(prior) - math.log(host_spread) - 0.5 * ((levels - host_mean) / host_spread) ** 2
    log_null = math.log(1 - prior) - math.log(null_spread) - 0.5 * ((levels - null_median) / null_spread) ** 2
    host_wins = log_host >= log_null
    # the host region runs from the Bonferroni line up to the first level where the null wins
    stop = len(levels) if host_wins.all() else int(np.argmin(host_wins))
    if stop > 0:
        out["threshold"] = float(math.exp(levels[stop - 1]))
    return out


# the scales a pattern is also matched at in the final scoring: a fixed-pixel trigger on photos of
# other sizes, or a copy resized by ±15%, reaches the scan smaller or larger than the template
SCALES = (0.7, 0.85, 1.18, 1.4)


def scaled(template: torch.Tensor, scale: float) -> torch.Tensor:
    """`template` (3, h, w) resized by `scale` (antialiased bilinear), at least 4 px a side."""
    h, w = template.shape[1:]
    size = (max(4, round(h * scale)), max(4, round(w * scale)))
    return F.interpolate(template[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


def border_cut(template: torch.Tensor, smoothed: bool) -> torch.Tensor | None:
    """`template` without its one-pixel border, the pattern's *cut* variant in the final scoring,
    or None where there is none: for a template matched smoothed (`matched_form` already cuts
    that border) and for one whose cut would be under `SMOOTHED_FROM` px a side.

    A pasted copy's outermost pixels are where the host bleeds in: the resize filter's support
    and JPEG's chroma subsampling (2 x 2 blocks) mix the host's pixels into the patch's edge, and
    the more so the smaller the patch is in the stored photo. On CIFAR-10 a 6-px trigger's
    one-pixel border is a third of its area, and its copies' residuals against the full template
    spread over the clean tail: dev `opaque-cifar-train-0.1pct/1` (blobs, 50 copies in 50,000
    images) had 18 copies above the line; without the border, 50 of 50 under it and no clean
    image (bench/RESULTS.md, "The cut variant")."""
    if smoothed or min(template.shape[1:]) - 2 < SMOOTHED_FROM:
        return None
    return template[:, 1:-1, 1:-1].contiguous()


def variant_threshold(residual: np.ndarray, pattern_hosts: np.ndarray, alpha: float, max_lookalike_ratio: float) -> dict[str, float] | None:
    """The host threshold of a pattern's variant (matched at another scale, or without its border:
    `border_cut`), or None when that variant is not kept. `residual`: the variant's best residual
    in every image; `pattern_hosts`: the images the
    pattern flags at its own scale. The variant gets the scan's own null (Bonferroni at `alpha`,
    the budget shared by the variants) widened to the Bayes line (`host_threshold`), and is kept
    only when it is acceptable as a pattern (`pattern_verdict`: threshold under 1, no look-alike
    continuum) and when most of its hosts (at least half) are the pattern's own hosts: it must
    find the same copies and more, not something else that a resized template happens to match."""
    null = null_threshold(residual, alpha)
    if not acceptable(null, max_lookalike_ratio):
        return None
    line = host_threshold(residual, null["threshold"])
    hosts = residual < line["threshold"]
    if not hosts.any() or (hosts & pattern_hosts).sum() < 0.5 * hosts.sum():
        return None
    return {**null, **line}


def pattern_verdict(expected_hosts: float, null: dict[str, float], min_hosts: int, max_lookalike_ratio: float) -> str:
    """Accept a verified template, or say why not.

    A window of flat colour equal to the template's mean scores a residual of exactly 1, whatever
    the template. When the null's host threshold is 1 or more, unrelated content already matches
    as well as a flat patch, so "hosts" are images with a flat area of about that colour: the
    template carries no structure to match (seen on the dev split: a near-flat 12 x 30 template
    with threshold 40 flagged 201 photos, 199 of them clean, on identical-1pct/20). Otherwise the pattern needs
    `min_hosts` expected hosts and a band above the threshold no fuller than the null predicts.
    """
    if null["threshold"] >= 1.0 and not null.get("structured"):
        return "rejected: the template matches no better than a flat patch of its mean colour"
    if expected_hosts < min_hosts:
        return f"fewer than {min_hosts} hosts"
    if null["lookalike_ratio"] > max_lookalike_ratio:
        return "rejected: natural look-alikes form a continuum"
    return "accepted"


def acceptable(null: dict[str, float], max_lookalike_ratio: float) -> bool:
    """`pattern_verdict`'s two refusals (a flat patch, a look-alike continuum), its host count set
    aside: whether a matched form of a template is acceptable at all."""
    return pattern_verdict(float("inf"), null, 0, max_lookalike_ratio) == "accepted"


def match_maps(images: np.ndarray, rows: np.ndarray, templates: list[torch.Tensor], which: np.ndarray, thresholds: np.ndarray, device: torch.device, smoothed: list[bool] | None = None, photos: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Where in each image its best pattern matches: row -> (R, R) float16 in [0, 1], 1 where the
    window centred there is an exact copy, 0 at twice the pattern's threshold and beyond."""
    maps: dict[int, np.ndarray] = {}
    for row in rows.tolist():
        t = int(which[row])
        template, is_smoothed = matched_form(templates[t].to(device), bool(smoothed[t]) if smoothed is not None else False)
        pixels = as_float(images[row : row + 1], device)
        residual = match_residual(smooth(pixels) if is_smoothed else pixels, template)
        if photos is not None:
            residual = residual.masked_fill(~on_photo(photos[row : row + 1], residual.shape, template.shape[1:], int(is_smoothed), residual.device), float("inf"))
        heat = (1.0 - residual[0] / (2 * float(thresholds[t]))).clamp(0, 1)
        h, w = template.shape[1:]
        full = torch.zeros(images.shape[-2:], device=heat.device)
        full[h // 2 : h // 2 + heat.shape[0], w // 2 : w // 2 + heat.shape[1]] = heat
        maps[int(row)] = full.cpu().numpy().astype(np.float16)
    return maps


def expected_host_count(host_rows: np.ndarray, sample_hosts: int, sampled: int, n: int, mined: np.ndarray) -> float:
    """A verified template's hosts in the whole scan of `n` images, estimated three ways, the
    largest kept: the hosts seen (`host_rows`, the probe's images under the line); the random
    sample's share (`sample_hosts` of `sampled`) scaled to the scan; and the seen hosts among the
    mined images (`mined`, sorted: the random subset the candidate groups come from) scaled by
    n / len(mined). The first and third are lower bounds of their expectation (a group need not
    hold every copy). The third matters when only part of a large scan is mined: 50 copies in
    50,000 images leave about 20 among 20,000 mined and 3 in a 3,000-image sample, which a
    Poisson draw leaves at 0 or 1 one time in five; the group's own copies then carry the count."""
    seen = float(len(host_rows))
    share = float(sample_hosts) * n / max(sampled, 1)
    in_mined = float(np.isin(host_rows, mined).sum()) * n / max(len(mined), 1)
    return max(seen, share, in_mined)


def default_min_hosts(n: int, mining_images: int) -> int:
    """Fewest hosts a pattern needs when not set: 0.1% of the mined images, at least 5 (a
    backdoor needs tens of poisons to take; below 5 copies a repeat is a near-duplicate)."""
    return max(5, int(math.ceil(0.001 * min(n, mining_images))))


def drop_thin_patterns(relative: np.ndarray, min_hosts: int) -> tuple[np.ndarray, list[int], list[str]]:
    """Drop the patterns flagged in fewer than `min_hosts` images of the whole scan.

    Verification extrapolates a pattern's host count from a random sample; once every image is
    scored the count is known. Seen on test dataset `identical-1pct/16`: a 22 x 7 natural edge
    shared by 4 photos was accepted at an extrapolated 5.2 hosts (min 5) and flagged 4 clean images.
    An image counts for the pattern it matches best (`relative`: (N, T), each pattern's score,
    flagged above 0.5), so a dropped pattern's images go to the best of the others: two cuts of one
    trigger can both be accepted, and the thinner one may hold copies that the other also flags
    (seen on dev `opaque-1pct/22`: 4 glyph copies lost with a 4-host cut of the same glyph). The
    thinnest pattern is dropped first and the counts are taken again.

    Returns which patterns stay (T,) bool, each pattern's count in the scan (when it was dropped,
    or at the end), and one warning per dropped pattern.
    """
    patterns = relative.shape[1]
    alive = np.ones(patterns, bool)
    counts = [0] * patterns
    warnings: list[str] = []
    while alive.any():
        live = np.where(alive[None, :], relative, -1.0)
        which = live.argmax(axis=1)
        flagged = live[np.arange(len(live)), which] > 0.5
        found = np.bincount(which[flagged], minlength=patterns)
        for t in np.nonzero(alive)[0]:
            counts[t] = int(found[t])
        thin = [t for t in np.nonzero(alive)[0] if found[t] < min_hosts]
        if not thin:
            break
        t = min(thin, key=lambda k: found[k])
        alive[t] = False
        warnings.append(f"pattern {t} matches {found[t]} images in the whole scan, fewer than min_hosts ({min_hosts}): not quarantined")
    return alive, counts, warnings


def prevalence_guard(flagged: np.ndarray, which: np.ndarray, patterns: int, limit: float) -> tuple[np.ndarray, list[float], list[str]]:
    """Unflag the samples of any pattern found in more than `limit` of the data (the decide stage, docs/architecture.md).

    A "trigger" carried by a large share of a dataset is a property of the data (a watermark, a
    frame, a logo), not a poison: it is reported, and quarantining half the data is left to a
    person's decision.

    Returns:
        the new flags (N,) bool, each pattern's flagged share, and one warning per guarded pattern.
    """
    flagged = flagged.copy()
    shares, warnings = [], []
    for t in range(patterns):
        share = float((flagged & (which == t)).mean()) if len(flagged) else 0.0
        shares.append(share)
        if share > limit:
            warnings.append(f"pattern {t} matches {share:.0%} of the data, above the prevalence guard of {limit:.0%}: a property of the data, not quarantined")
            flagged &= which != t
    return flagged, shares, warnings


THUMBNAIL = 16


def thumbnails(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(N, 3, 16, 16) float32 block means of every image (`THUMBNAIL` cells a side): what
    `one_photo_repeated` compares, computed once per scan."""
    out = np.zeros((len(images), 3, THUMBNAIL, THUMBNAIL), np.float32)
    for start in range(0, len(images), chunk):
        out[start : start + chunk] = F.adaptive_avg_pool2d(as_float(images[start : start + chunk]), THUMBNAIL).numpy()
    return out


def one_photo_repeated(hosts: np.ndarray, boxes: np.ndarray, cells: np.ndarray, resolution: int, semantic: np.ndarray | None, alpha: float, pool: np.ndarray | None = None) -> dict[str, float]:
    """Whether a pattern's hosts are copies of one photo (a dataset's natural near-duplicates)
    rather than unrelated photos that share a pasted patch.

    Each host is compared with every image of the scan outside its matched box: on the
    `thumbnails` (`cells`, 16 x 16 block means) with every cell the box touches left out, by
    correlation. Hosts of a pasted patch are otherwise unrelated photos, so a host's most similar
    image is another host about as often as chance gives (the hosts' share of the images of its
    semantic cluster, or of the whole scan without `semantic`); copies of one photo resemble each
    other everywhere. The pasted patch itself is left out, so a trigger salient enough to pull
    its hosts together in an embedding does not make them look alike here. Measured
    (bench/RESULTS.md, "One photo repeated"): CIFAR-10 test holds 15 near-copies of one white car
    (shifted, rescaled and tinted), which `mine` verified as a 21 x 18 pattern; for 11 of the 15
    the most similar image is another of them (chance 0.04; 11 of 15 too, chance 0.14, when only
    3,000 random images and the copies are compared, as in verification); on CIFAR-10 train the
    same car has 78 copies, and of 34 of them in such a probe 32 (chance 0.23). For the 100 hosts of a pasted grid
    in the same scan it is 2 (chance 1.4 in 100), for the 39 hosts of a glyph on Imagenette 1
    (chance 0.5 in 39), and for 30 generated scenes carrying a 12-px patch, whose random-init
    embeddings the patch does pull together, 4 (chance 4.4).

    `boxes`: (len(hosts), 4) x0, y0, x1, y1 of each host's match, in pixels of the scan's
    `resolution`. `pool`: the images whose host status is known (verification's probe; `hosts`
    among them), the only ones compared: a near-copy outside it would be a host too, but is not
    counted as one (on CIFAR-10 train 34 of the car's 78 copies were in the probe, and with the
    whole scan compared 38% of them had a copy as most similar image, most of those copies
    unprobed). `repeated` is 1.0 when more than half of the hosts have another host as most
    similar image and that count is beyond chance at level `alpha` (one-sided binomial tail)."""
    from scipy.stats import binom

    hosts = np.asarray(hosts, np.int64)
    if len(hosts) < 2:
        return {"neighbour_share": 0.0, "neighbour_chance": 0.0, "repeated": 0.0}
    if pool is not None:
        pool = np.unique(np.asarray(pool, np.int64))
        position = np.searchsorted(pool, hosts)
        return one_photo_repeated(position, boxes, cells[pool], resolution, None if semantic is None else semantic[pool], alpha)
    n, cell = len(cells), resolution / THUMBNAIL
    flat = cells.reshape(n, 3, -1)
    member = np.zeros(n, bool)
    member[hosts] = True
    hits = 0
    for host, (x0, y0, x1, y1) in zip(hosts.tolist(), np.asarray(boxes).tolist()):
        keep = np.ones((THUMBNAIL, THUMBNAIL), bool)
        keep[max(0, int(y0 // cell)) : int(np.ceil(y1 / cell)), max(0, int(x0 // cell)) : int(np.ceil(x1 / cell))] = False
        values = flat[:, :, keep.reshape(-1)].reshape(n, -1)
        values = values - values.mean(1, keepdims=True)
        values /= np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-9)
        similarity = values @ values[host]
        similarity[host] = -np.inf
        hits += int(member[int(similarity.argmax())])
    if semantic is not None:
        sizes = np.bincount(semantic, minlength=int(semantic.max()) + 1)
        inside = np.bincount(semantic[hosts], minlength=len(sizes))
        cluster = semantic[hosts]
        chance = float(np.mean((inside[cluster] - 1) / np.maximum(sizes[cluster] - 1, 1)))
    else:
        chance = (len(hosts) - 1) / max(n - 1, 1)
    share = hits / len(hosts)
    tail = float(binom.sf(hits - 1, len(hosts), min(max(chance, 1e-9), 1.0)))
    return {"neighbour_share": share, "neighbour_chance": chance, "repeated": float(share > 0.5 and tail < alpha)}


def host_concentration(hosts: np.ndarray, semantic: np.ndarray, rng: np.random.Generator, draws: int = 200) -> dict[str, float]:
    """How concentrated a pattern's hosts are in one semantic cluster, against chance.

    The targeted SSL-Backdoor attack draws every poison from one class, so its hosts pile up in the
    clusters of that class; an untargeted attack or a benign watermark spreads them like any random
    sample. `cluster_share` is the share of hosts in their most common cluster; `chance_share` the
    99th percentile of the same statistic over `draws` random samples of as many images;
    `targeted` is 1.0 when the hosts beat it.
    """
    def top_share(rows: np.ndarray) -> float:
        return float(np.bincount(semantic[rows]).max() / max(1, len(rows)))

    share = top_share(hosts)
    chance = float(np.quantile([top_share(rng.choice(len(semantic), len(hosts), replace=False)) for _ in range(draws)], 0.99))
    return {"cluster_share": share, "chance_share": chance, "targeted": float(share > chance)}
