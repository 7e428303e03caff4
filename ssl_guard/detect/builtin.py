"""The detectors shipped with ssl-guard, registered in the order `auto` and `ensemble` run them."""

from __future__ import annotations

from ssl_guard.detect.registry import Detector, DetectorInputs, register
from ssl_guard.detect.result import Detection


class _PixelDetector(Detector):
    """A pre-training detector: it reads the scan's image cache and the semantic clusters (for the
    targeted / untargeted readout), with its typed settings at `config.<name>`."""

    def settings(self, config):
        return getattr(config, self.name)

    def detect(self):
        """The detection function: (images, semantic, settings, device, progress) -> Detection."""
        raise NotImplementedError

    def run(self, inputs: DetectorInputs) -> Detection:
        return self.detect()(inputs.arrays.images, inputs.semantic, self.settings(inputs.config), inputs.device, inputs.progress)


@register
class MineDetector(_PixelDetector):
    """Patch triggers: a small image pasted into many unrelated photos (docs/mine.md)."""

    name = "mine"
    in_auto = "always"
    in_ensemble = True

    def detect(self):
        from ssl_guard.detect.mine import detect_mine

        return detect_mine

    def run(self, inputs: DetectorInputs) -> Detection:
        # photos of mixed sizes: mined on the native view, where a fixed-pixel trigger keeps one size
        if inputs.native is None:
            return super().run(inputs)
        found = self.detect()(inputs.native.images, inputs.semantic, self.settings(inputs.config), inputs.device, inputs.progress, photo_side=inputs.resolution, photos=inputs.native.placements())
        return inputs.native.to_cache(found, inputs.resolution)


@register
class AdditiveDetector(_PixelDetector):
    """Global triggers (blends, CTRL): one signal added to many unrelated images (docs/additive.md)."""

    name = "additive"
    in_auto = "always"
    in_ensemble = True

    def detect(self):
        from ssl_guard.detect.additive import detect_additive

        return detect_additive


class _ClusterMasking(Detector):
    """PoisonCAM and PatchSearch: read a backdoor out of a trained threat model's clusters."""

    def settings(self, config):
        return config.cluster

    def run(self, inputs: DetectorInputs) -> Detection:
        from ssl_guard.detect.poisoncam import ClusterMaskingConfig, detect_clusters

        return detect_clusters(inputs.arrays.images, inputs.arrays.embeddings, inputs.net, ClusterMaskingConfig(**inputs.config.cluster), self.name, inputs.device, inputs.progress)


@register
class PoisonCamDetector(_ClusterMasking):
    name = "poisoncam"
    in_auto = "trained"
    in_ensemble = True


@register
class PatchSearchDetector(_ClusterMasking):
    name = "patchsearch"
    in_auto = "never"
    in_ensemble = False
