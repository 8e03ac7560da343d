"""Common interface of every backbone: a module mapping an image batch to named feature maps."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ...errors import ConfigError
from ..layers import ShapeSpec, ValidRegion, run_with_region

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """Base class of the bottom-up networks and of the FPN.

    ``forward(x)`` takes ``x (Tensor[N, C, H, W])`` and returns ``dict[str, Tensor]`` holding
    exactly :attr:`out_features`, in that order. Subclasses fill ``_feature_strides`` and
    ``_feature_channels`` for every feature they can produce and set ``_out_features``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._out_features: list[str] = []
        self._feature_strides: dict[str, int] = {}
        self._feature_channels: dict[str, int] = {}

    def _set_out_features(self, out_features: Sequence[str], what: str) -> None:
        """Validate and store the requested output names.

        Args:
            out_features: names requested by the config.
            what: config key to name in the error message.

        Raises:
            ValueError: if a name is not a feature of this network or the list is empty.
        """
        out_features = list(out_features)
        unknown = [f for f in out_features if f not in self._feature_strides]
        if not out_features or unknown:
            raise ConfigError(
                f"{what} = {out_features} is invalid for {type(self).__name__}: "
                f"choose a non-empty subset of {list(self._feature_strides)}"
            )
        self._out_features = out_features

    def forward_with_regions(
        self, x: Tensor, region: ValidRegion | None = None
    ) -> tuple[dict[str, Tensor], dict[str, ValidRegion | None]]:
        """Features and, when ``region`` is given, the region of each (None otherwise).

        Args:
            x (Tensor[N, C, H, W]): normalized images.
            region: valid part of each image (:class:`~centermask2.modeling.layers.padding.ValidRegion`);
                padding outside it then has no effect on anything inside.
        """
        return self._forward_stages(x, region)

    def _forward_stages(
        self, x: Tensor, region: ValidRegion | None = None
    ) -> tuple[dict[str, Tensor], dict[str, ValidRegion | None]]:
        """Run ``self.stem`` then the modules named in ``self.stage_names`` in order, keeping the
        outputs named in :attr:`out_features` (``"stem"`` included) and their regions. For stem +
        stages networks.

        Args:
            x (Tensor[N, C, H, W]): normalized images.
            region: see :meth:`forward_with_regions`.
        """
        outputs: dict[str, Tensor] = {}
        regions: dict[str, ValidRegion | None] = {}
        if region is not None:
            x = x.clone()  # masks apply in place; the caller's tensor stays as it was
        x, region = run_with_region(self.stem, x, region)
        if "stem" in self._out_features:
            outputs["stem"], regions["stem"] = x, region
        for name in self.stage_names:
            x, region = run_with_region(getattr(self, name), x, region)
            if name in self._out_features:
                outputs[name], regions[name] = x, region
        return outputs, regions

    @property
    def out_features(self) -> list[str]:
        """Names of the returned feature maps, high to low resolution."""
        return list(self._out_features)

    @property
    def out_feature_strides(self) -> dict[str, int]:
        """Stride (w.r.t. the input image) of each returned feature map."""
        return {f: self._feature_strides[f] for f in self._out_features}

    @property
    def out_feature_channels(self) -> dict[str, int]:
        """Channel count of each returned feature map."""
        return {f: self._feature_channels[f] for f in self._out_features}

    def output_shape(self) -> dict[str, ShapeSpec]:
        """``{name: ShapeSpec(channels, stride)}`` for each returned feature map."""
        return {
            f: ShapeSpec(channels=self._feature_channels[f], stride=self._feature_strides[f])
            for f in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be padded to a multiple of this (0: no constraint)."""
        return 0

    @property
    def padding_constraints(self) -> dict[str, int]:
        """Extra padding requirements, as detectron2: ``{"square_size": 0}`` means none."""
        return {"square_size": 0}
