"""Deployment: ONNX export of the two-stage detectors and running the graph in onnxruntime
(see onnx_export.py and docs/deployment.md)."""
from .onnx_export import (OPSET, OnnxDetector, RCNNExportModel, export_onnx, postprocess,
                          preprocess)
from .parity import compare_detections

__all__ = ['OPSET', 'OnnxDetector', 'RCNNExportModel', 'export_onnx', 'preprocess',
           'postprocess', 'compare_detections']
