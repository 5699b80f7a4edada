"""Few-shot view transforms beyond MONAI's geometric and intensity ones."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import GaussianSmooth, MapTransform, RandomizableTransform
from monai.transforms.utils_morphological_ops import dilate

__all__ = ["RandEraseForegroundd"]


class RandEraseForegroundd(RandomizableTransform, MapTransform):
    """Erase the labelled structure in a random band of columns: the image there is filled from its surroundings and
    the label set to background.

    A few shots of panoramic radiographs show teeth wherever a jaw is; the pool also holds jaws with missing teeth and
    implants, where a model trained on those shots paints teeth into the gaps. An erased view shows the structure's
    usual place without it. The fill is a normalised Gaussian convolution of the pixels outside the (dilated) label,
    so the band takes the intensity of the bone and tissue around it.

    Args:
        keys: the image key and the label key, in that order; both channel-first 2D, ``(C, H, W)``.
        prob: probability of erasing in a view (0: the transform leaves every view as it is).
        width: the band's width as a fraction of the label's horizontal extent, drawn from this range.
        sigma: standard deviation (pixels) of the fill's Gaussian.
        margin: pixels the label is dilated by before erasing, so no outline is left behind.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        prob: float = 0.0,
        width: Sequence[float] = (0.15, 0.5),
        sigma: float = 12.0,
        margin: int = 3,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) != 2:
            raise ValueError(f"keys must name the image and the label, got {self.keys}")
        if not 0.0 < width[0] <= width[1] <= 1.0:
            raise ValueError(f"width must be a range within (0, 1], got {tuple(width)}")
        self.width = (float(width[0]), float(width[1]))
        self.smooth = GaussianSmooth(sigma)
        self.margin = int(margin)
        self._fraction = self._start = 0.0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self._fraction = float(self.R.uniform(*self.width))
        self._start = float(self.R.uniform())

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        image_key, label_key = self.keys
        label = torch.as_tensor(d[label_key])
        if label.ndim != 3:
            raise ValueError(
                f"'{label_key}' must be a channel-first 2D label (C, H, W), got shape {tuple(label.shape)}"
            )
        if not self._do_transform or not (label > 0.5).any():
            return d
        image = torch.as_tensor(d[image_key]).float()
        fg = (label > 0.5).float()
        grown = torch.as_tensor(dilate(fg[None], 2 * self.margin + 1))[0] if self.margin else fg
        columns = torch.nonzero(fg.amax(dim=(0, 1)) > 0).flatten()
        lo, hi = int(columns.min()), int(columns.max()) + 1
        span = max(1, round(self._fraction * (hi - lo)))
        x0 = lo + round(self._start * (hi - lo - span))
        band = torch.zeros_like(grown)
        band[..., x0 : x0 + span] = 1.0
        erase = grown * band  # (1, H, W)
        keep = 1.0 - grown
        fill = torch.as_tensor(self.smooth(image * keep)) / torch.as_tensor(self.smooth(keep.expand_as(image))).clamp(
            min=1e-6
        )
        d[image_key] = torch.where(erase.expand_as(image) > 0, fill, image).to(torch.as_tensor(d[image_key]).dtype)
        d[label_key] = torch.where(erase > 0, torch.zeros_like(label), label)
        return d
