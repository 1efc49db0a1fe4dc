"""The library behind the analysis tools in tools/ (MMDetection's names and arguments):
browse a dataset after its pipeline, plot training logs, confusion matrices, best / worst
images by AP, the resolved config."""
from .browse import browse_dataset
from .confusion import calculate_confusion_matrix, plot_confusion_matrix
from .logs import cal_train_time, find_scalars, load_scalars, plot_curve
from .results import image_aps, rank_images, save_ranked_images

__all__ = ['browse_dataset', 'calculate_confusion_matrix', 'plot_confusion_matrix',
           'cal_train_time', 'find_scalars', 'load_scalars', 'plot_curve', 'image_aps',
           'rank_images', 'save_ranked_images']
