"""Few-shot studies: a grid of tasks x shots x seeds x methods, tracked in MLflow, with a report."""

from blosam_med.study.config import Cell, MethodSpec, StudyConfig, load_study
from blosam_med.study.report import write_report
from blosam_med.study.runner import run_study, slab_split, study_datalist

__all__ = [
    "Cell",
    "MethodSpec",
    "StudyConfig",
    "load_study",
    "run_study",
    "slab_split",
    "study_datalist",
    "write_report",
]
