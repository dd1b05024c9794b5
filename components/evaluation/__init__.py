"""Face verification and identification metrics: IJB-B/C 1:1 and 1:N, LFW-style ``.bin`` sets, ROC."""

from components.evaluation.embedders import OnnxEmbedder, TorchEmbedder, load_embedder
from components.evaluation.ijbc import IjbcOptions, evaluate_ijbc
from components.evaluation.roc import roc_summary
from components.evaluation.verification import kfold_accuracy, load_bin

__all__ = ["IjbcOptions", "OnnxEmbedder", "TorchEmbedder", "evaluate_ijbc", "kfold_accuracy", "load_bin",
           "load_embedder", "roc_summary"]
