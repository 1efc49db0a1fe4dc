from .det_data_sample import DetDataSample, SampleList

__all__ = ['DetDataSample', 'SampleList']
