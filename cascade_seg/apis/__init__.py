"""Inference API: ``init_detector`` and ``inference_detector``."""
from .inference import LoadImageFromNDArray, build_test_pipeline, inference_detector, init_detector

__all__ = ['init_detector', 'inference_detector', 'build_test_pipeline', 'LoadImageFromNDArray']
