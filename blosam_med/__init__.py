"""blosam_med: prompt-free few-shot medical image segmentation with BLO-SAM on MONAI."""

__version__ = "0.1.0"
