"""Next sample: the unlabelled image a task's current adapter is least sure of, from its probability map."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from blosam_med.inference import predict_case
from lib.errors import BadInput
from lib.models import ModelStore, model_name

__all__ = ["LeastConfident", "uncertainty"]

logger = logging.getLogger(__name__)


def uncertainty(probabilities: np.ndarray) -> float:
    """1 - the mean over pixels (voxels) of max(p, 1 - p): 0 when every pixel is decided with certainty, 0.5 when
    every pixel is a coin toss. ``probabilities``: any shape, values in [0, 1]."""
    p = np.asarray(probabilities, dtype=np.float64)
    return float(1.0 - np.maximum(p, 1.0 - p).mean())


class LeastConfident(Strategy):
    """Least-confidence sampling: of the unlabelled images (at most ``max_images`` of them, drawn at random when
    there are more), the one whose probability map from the model's current adapter has the highest
    :func:`uncertainty`. Scores are kept per image file and adapter file, so they are computed again only after a
    training installs a new adapter. Images that cannot be read are skipped and listed in the answer (``skipped``).

    Request keys: ``model`` (default: the first model), ``max_images``.
    """

    def __init__(self, store: ModelStore, tasks: list[str], max_images: int = 20) -> None:
        super().__init__("Unlabelled image the current adapter is least sure of (mean pixel confidence)")
        self.store, self.tasks, self.max_images = store, list(tasks), max_images
        self._scores: dict[tuple[Any, ...], float] = {}

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "config": {"model": [model_name(t) for t in self.tasks], "max_images": self.max_images},
        }

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        names = {model_name(t): t for t in self.tasks}
        name = request.get("model") or model_name(self.tasks[0])
        if name not in names:
            raise BadInput(f"least_confident: unknown model '{name}'; choose one of {', '.join(names)}")
        try:
            limit = int(request.get("max_images", self.max_images))
        except (TypeError, ValueError):
            raise BadInput(f"least_confident: max_images {request.get('max_images')!r} is not a whole number") from None
        images = sorted(datastore.get_unlabeled_images())
        if not images:
            return {}
        if len(images) > limit:
            images = random.sample(images, limit)
        try:
            loaded = self.store.load(names[name])
        except (ValueError, OSError) as err:
            raise BadInput(f"least_confident: {err}") from err
        scores: dict[str, float] = {}
        skipped: list[str] = []
        for image_id in images:
            path = Path(datastore.get_image_uri(image_id))
            try:
                key = (str(path), path.stat().st_mtime_ns, loaded.signature)
                if key not in self._scores:
                    pred = predict_case({"image": str(path)}, loaded.task, loaded.predictor, progress=False)
                    self._scores[key] = uncertainty(pred.probabilities())
                scores[image_id] = self._scores[key]
            except (ValueError, OSError) as err:
                logger.warning("least_confident: skipped image '%s': %s", image_id, err)
                skipped.append(f"{image_id}: {err}")
        if not scores:
            raise BadInput(
                f"least_confident: none of {len(images)} unlabelled images could be read: {'; '.join(skipped)}"
            )
        best = max(scores, key=lambda i: scores[i])
        logger.info("least_confident (%s): %s, uncertainty %.4f of %d scored", name, best, scores[best], len(scores))
        return {
            "id": best,
            "uncertainty": scores[best],
            "model": name,
            "adapter": str(loaded.adapter),
            "scored": len(scores),
            "skipped": skipped,
        }
