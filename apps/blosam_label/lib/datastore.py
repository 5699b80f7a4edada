"""MONAI Label's local datastore, refusing a label the app could not train on before anything is written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from monailabel.datastore.local import LocalDatastore

from blosam_med.data import mask_values, read_image
from lib.errors import BadInput

__all__ = ["CheckedDatastore", "label_problem"]

logger = logging.getLogger(__name__)


def label_problem(image_path: str | Path, label_path: str | Path, label_name: str = "the label") -> str | None:
    """What is wrong with a label file for an image, or ``None``: it must be readable, on the image's grid (same
    size; a NIfTI label of a 2D image read as ``blosam`` reads 2D NIfTI) and hold whole numbers >= 0 (0 =
    background), in one channel (or identical channels). ``label_name`` replaces the label's path in messages (an
    upload's temporary file means nothing to the user)."""
    try:
        image = read_image(image_path)
    except (ValueError, OSError) as err:
        return f"its image cannot be read, so the label cannot be checked: {err}"
    try:
        label = mask_values(read_image(label_path), label_path)
    except (ValueError, OSError) as err:
        return str(err).replace(str(label_path), label_name)
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        return f"{label_name} has size {tuple(label.shape[1:])}, the image {Path(image_path).name} {tuple(image.shape[1:])}"
    values = torch.unique(torch.as_tensor(label).float())
    if bool((values < 0).any()) or not torch.equal(values, values.round()):
        found = [round(float(v), 4) for v in values[:8]]
        return f"{label_name} holds values {found}; a label map holds whole numbers >= 0 (0 = background)"
    return None


class CheckedDatastore(LocalDatastore):
    """:class:`LocalDatastore` whose ``save_label`` checks the label against its image first (:func:`label_problem`).

    A refused label ends the request with HTTP 400 and the reason; the label stored before (if any) is kept.
    """

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        if image_id not in self.list_images():
            raise BadInput(f"label not saved: no image '{image_id}' in the datastore")
        problem = label_problem(self.get_image_uri(image_id), label_filename, "the uploaded label")
        if problem is not None:
            logger.warning("label for image '%s' (tag %s) refused: %s", image_id, label_tag, problem)
            raise BadInput(
                f"label for image '{image_id}' not saved: {problem}; the label stored before (if any) is unchanged"
            )
        return super().save_label(image_id, label_filename, label_tag, label_info)
