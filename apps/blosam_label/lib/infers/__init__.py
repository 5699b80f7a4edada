from lib.infers.blosam import BlosamInfer, write_label

__all__ = ["BlosamInfer", "write_label"]
