from lib.trainers.blosam import BlosamTrain
from lib.trainers.progress import TrainProgress, TrainStats

__all__ = ["BlosamTrain", "TrainProgress", "TrainStats"]
