"""Inference with any exported form (model directory, ONNX fp32/int8, TorchScript, ExportedProgram):
top-k prediction for image files and a cross-runtime benchmark."""

from .bench import BenchSettings, bench, format_markdown, format_table, machine_info
from .predict import Label, Prediction, load_images, predict, preprocess, top_k
from .runtime import OnnxRuntime, Runtime, TorchRuntime, evaluate_runtime, load_onnx, load_runtime

__all__ = [
    "BenchSettings", "Label", "OnnxRuntime", "Prediction", "Runtime", "TorchRuntime", "bench", "evaluate_runtime",
    "format_markdown", "format_table", "load_images", "load_onnx", "load_runtime", "machine_info", "predict",
    "preprocess", "top_k",
]
