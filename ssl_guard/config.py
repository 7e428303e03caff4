"""Settings of the `scan` command: the top-level defaults, and the typed sub-configs of each detector
(`MineConfig`, `AdditiveConfig`, `ClusterMaskingConfig` and `BootstrapConfig` live beside their code and are validated
before any stage runs)."""

from __future__ import annotations

import pydantic

from ssl_guard.detect.additive import AdditiveConfig
from ssl_guard.detect.mine import MineConfig


# With no trained encoder (`--encoder auto`) the scan embeds with a seeded random ResNet-18: no
# training, and its embeddings still give the semantic clusters of the targeted / untargeted test
# (`mine` itself reads only the pixels). The pipeline sets its resolution to the scan's.
DEFAULT_MINING_ENCODER = "random:resnet18?width=64&resolution=64&seed=0"


class ScanConfig(pydantic.BaseModel):
    """What a scan does; hashed into the run folder so that a changed setting invalidates the stages
    it affects."""

    model_config = pydantic.ConfigDict(extra="forbid")

    encoder: str = pydantic.Field("auto", description="hub:org/name[@rev], a folder, random:..., bootstrap, or auto")
    method: str = pydantic.Field("auto", description="auto, ensemble, or a registered detector (ssl_guard.detect.registry)")
    resolution: int | None = pydantic.Field(None, ge=16, le=1024, description="scan resolution; default: the encoder's")
    batch_size: int = pydantic.Field(256, ge=1)
    workers: int = pydantic.Field(2, ge=0)
    max_pixels: int = pydantic.Field(64_000_000, ge=1)
    semantic_clusters: int | None = pydantic.Field(None, ge=1, description="k-means clusters of the embeddings; default from N")
    top_suspects: int = pydantic.Field(24, ge=0, le=500)
    seed: int = 0
    mine: MineConfig = pydantic.Field(default_factory=MineConfig)
    additive: AdditiveConfig = pydantic.Field(default_factory=AdditiveConfig)
    cluster: dict = pydantic.Field(default_factory=dict, description="ClusterMaskingConfig overrides for poisoncam/patchsearch")
    bootstrap: dict = pydantic.Field(default_factory=dict, description="BootstrapConfig overrides for --encoder bootstrap")

    @pydantic.field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from ssl_guard.detect import registry

        choices = ("auto", "ensemble", *registry.names())
        if value not in choices:
            raise ValueError(f"unknown method {value!r}; choose one of {', '.join(choices)}")
        return value


def semantic_cluster_count(n: int) -> int:
    """k-means clusters for the targeted/untargeted test: about 100 images per cluster, 2..100."""
    return 1 if n < 4 else int(min(100, max(2, n // 100)))
