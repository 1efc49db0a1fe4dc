"""Drawing predictions: cv2 helpers and an mmengine Visualizer."""
from .draw import (class_color, draw_arrays, draw_det_data_sample, draw_instances,
                   draw_prediction, select_instances)
from .visualizer import DetLocalVisualizer

__all__ = ['class_color', 'draw_arrays', 'draw_instances', 'draw_det_data_sample',
           'draw_prediction', 'select_instances', 'DetLocalVisualizer']
