"""Draw a dataset's ground truth as the model receives it: after the whole pipeline (resize,
flip, ...), so that a wrong annotation, class mapping or transform shows up before training."""
import os
import os.path as osp

import numpy as np

__all__ = ['browse_dataset', 'build_split_dataset']


def build_split_dataset(cfg, split='train'):
    """The dataset of ``<split>_dataloader`` (under the config's default scope)."""
    from mmengine.registry import init_default_scope

    import cascade_seg.datasets  # noqa: F401  (registers datasets and transforms)
    from cascade_seg.registry import DATASETS
    init_default_scope(cfg.get('default_scope', 'cascade_seg'))
    loader = cfg.get(f'{split}_dataloader')
    if not loader:
        raise ValueError(f'the config has no {split}_dataloader')
    return DATASETS.build(loader['dataset'])


def _out_name(path, index, used):
    name = osp.basename(path) if path else f'{index:06d}.png'
    stem, ext = osp.splitext(name)
    if name in used:  # same base name in two folders (a/x.jpg, b/x.jpg)
        name = f'{stem}_{index}{ext}'
    used.add(name)
    return name


def browse_dataset(cfg, output_dir=None, show=False, show_interval=2., split='train',
                   max_images=None, progress=True):
    """Draw every sample's ``gt_instances`` (boxes, masks, class names) on its image as it
    leaves the pipeline (BGR ``inputs``). With ``output_dir`` write ``<image base name>``
    there; with ``show`` display each for ``show_interval`` seconds where there is a screen.
    Returns the number of images drawn."""
    from mmengine.utils import ProgressBar

    from cascade_seg.visualization import draw_instances
    from cascade_seg.visualization.show import show_image
    dataset = build_split_dataset(cfg, split)
    classes = dataset.metainfo.get('classes')
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
    bar = ProgressBar(n) if progress and n else None
    used = set()
    for i in range(n):
        item = dataset[i]
        img = np.ascontiguousarray(item['inputs'].permute(1, 2, 0).numpy())
        sample = item['data_samples']
        gt = sample.get('gt_instances', None)
        drawn = draw_instances(img, gt, classes) if gt is not None else img.copy()
        path = sample.metainfo.get('img_path')
        if show:
            show_image(drawn, osp.basename(path or str(i)), show_interval)
        if output_dir:
            import cv2
            cv2.imwrite(osp.join(output_dir, _out_name(path, i, used)), drawn)
        if bar is not None:
            bar.update()
    return n
