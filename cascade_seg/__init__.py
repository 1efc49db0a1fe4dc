"""cascade_seg: multi-stage cascade instance segmentation on one config-driven RoI head."""
__version__ = '0.1.0'
