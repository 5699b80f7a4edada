from lib.activelearning.least_confident import LeastConfident, uncertainty

__all__ = ["LeastConfident", "uncertainty"]
