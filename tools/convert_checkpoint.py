"""Convert a torchvision or MMDetection 3.x checkpoint to cascade_seg parameter names.

    python tools/convert_checkpoint.py --from torchvision maskrcnn_resnet50_fpn.pth out.pth \\
        --config configs/mask_rcnn/mask-rcnn_r50_fpn_torchvision.py
    python tools/convert_checkpoint.py --from torchvision --coco80 IN.pth out.pth \\
        --config configs/mask_rcnn/mask-rcnn_r50_fpn_torchvision.py \\
        --cfg-options model.roi_head.num_classes=80
    python tools/convert_checkpoint.py --from mmdet htc_r50_fpn_1x_coco.pth out.pth \\
        --config configs/htc/htc_r50_fpn_mmdet.py

With ``--config`` the model is built (no weights loaded) and every key is checked against it:
missing, unexpected and shape-mismatched keys are listed, and the exit status is 1 unless all
match. See docs/checkpoints.md for the mapping tables.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from cascade_seg.utils.convert import (COCO80_CATEGORY_IDS, align_to_model,  # noqa: E402
                                       convert_mmdet, convert_torchvision, load_state_dict_file,
                                       select_classes)

CONVERTERS = {'torchvision': convert_torchvision, 'mmdet': convert_mmdet}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--from', dest='source', required=True, choices=sorted(CONVERTERS))
    p.add_argument('input', help='source checkpoint (.pth/.pt)')
    p.add_argument('output', help='where to write the converted checkpoint')
    p.add_argument('--config', help='cascade_seg config to check the keys against')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help='override config keys, e.g. model.roi_head.num_classes=80')
    p.add_argument('--coco80', action='store_true',
                   help='torchvision only: keep the 80 COCO classes in use (usual COCO label '
                        'order, num_classes=80) instead of the 90 category-id slots')
    return p.parse_args(argv)


def model_state_dict(config, cfg_options=None):
    import cascade_seg.models  # noqa: F401 - registers the modules
    from cascade_seg.engine.runner_utils import load_config
    from cascade_seg.registry import MODELS
    cfg = load_config(config, cfg_options, strict_num_classes=False)
    return MODELS.build(cfg.model).state_dict()


def main(argv=None):
    args = parse_args(argv)
    src = load_state_dict_file(args.input)
    sd, unmapped = CONVERTERS[args.source](src)
    if args.coco80:
        if args.source != 'torchvision':
            raise SystemExit('--coco80 applies to --from torchvision only')
        sd = select_classes(sd, [i - 1 for i in COCO80_CATEGORY_IDS])
    ok = True
    if args.config:
        sd, report = align_to_model(sd, model_state_dict(args.config, args.cfg_options), unmapped)
        print(report)
        ok = report.ok
    elif unmapped:
        print(f'unmapped source keys ({len(unmapped)}):\n  ' + '\n  '.join(unmapped))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save(dict(state_dict=sd, meta=dict(converted_from=args.source,
                                             source=os.path.basename(args.input))), args.output)
    print(f'{len(sd)} tensors -> {args.output}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
