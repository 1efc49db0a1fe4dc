"""Precision as one setting (engine/precision.py): resolution and plumbing through the tools,
the inference API, the benchmark and ablation specs; the float32 islands really run in float32
under bfloat16 autocast; a bf16 run of a small model trains."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import cascade_seg.models  # noqa: F401  (registers the modules)
from cascade_seg.engine import precision as prec
from cascade_seg.engine.benchmark import build_benchmark_model, synthetic_batch
from tests.test_tools import _tool  # loads tools/<name>.py as a module

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MASK_RCNN = osp.join(REPO, 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py')
HTC = osp.join(REPO, 'configs/htc/htc_r18_fpn_synthetic.py')
CENTERMASK = osp.join(REPO, 'configs/centermask/centermask_r18_fpn_synthetic.py')


@pytest.fixture
def native_bf16(monkeypatch):
    """Behave as on a CPU with native bfloat16, whatever this one has."""
    monkeypatch.setattr(prec, 'cpu_has_native_bf16', lambda: True)


# ----------------------------------------------------------------------------- resolution

def test_names_and_resolution(native_bf16, monkeypatch):
    assert [prec.normalize_precision(v) for v in ('fp32', 'bfloat16', torch.float16, None)] == \
        ['fp32', 'bf16', 'fp16', None]
    with pytest.raises(ValueError, match='precision must be one of'):
        prec.normalize_precision('int8')
    assert prec.resolve_precision('bf16', 'cpu') == 'bf16'
    assert prec.resolve_precision(None, 'cpu') == 'fp32'
    assert prec.resolve_precision('fp16', 'cuda') == 'fp16'
    with pytest.raises(ValueError, match='fp16 needs a CUDA device'):
        prec.resolve_precision('fp16', 'cpu')


def test_bf16_without_native_support_falls_back_once(monkeypatch):
    monkeypatch.setattr(prec, 'cpu_has_native_bf16', lambda: False)
    monkeypatch.setattr(prec, '_warned', set())
    said = []
    monkeypatch.setattr('mmengine.logging.print_log', lambda msg, **kw: said.append(msg))
    assert prec.resolve_precision('bf16', 'cpu') == 'fp32'
    assert prec.resolve_precision('bf16', 'cpu') == 'fp32'
    assert len(said) == 1 and 'no native bfloat16' in said[0]


def test_native_bf16_check_reads_cpu_flags(monkeypatch):
    prec.cpu_has_native_bf16.cache_clear()
    try:
        monkeypatch.setattr(prec, '_cpu_flags', lambda: {'avx512f', 'avx512_bf16'})
        assert prec.cpu_has_native_bf16()
        prec.cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(prec, '_cpu_flags', lambda: {'avx512f', 'avx2'})
        assert not prec.cpu_has_native_bf16()
        prec.cpu_has_native_bf16.cache_clear()
        monkeypatch.setenv('CASCADE_SEG_NATIVE_BF16', '1')
        assert prec.cpu_has_native_bf16()
    finally:
        prec.cpu_has_native_bf16.cache_clear()


def test_apply_precision_sets_the_optimizer_wrapper(native_bf16):
    base = Config.fromfile(MASK_RCNN)
    cfg = copy.deepcopy(base)
    assert prec.apply_precision(cfg, 'bf16', device='cpu') == 'bf16'
    assert cfg.precision == 'bf16' and cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16' and cfg.optim_wrapper.clip_grad.max_norm == 35
    cfg = copy.deepcopy(base)  # the config's key, and --amp as an alias
    cfg.precision = 'bf16'
    assert prec.apply_precision(cfg, device='cpu') == 'bf16'
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    assert prec.apply_precision(cfg, 'fp32', device='cpu') == 'fp32'  # the argument wins
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'dtype' not in cfg.optim_wrapper
    cfg = copy.deepcopy(base)
    assert prec.apply_precision(cfg, amp=True, device='cpu') == 'bf16'
    cfg = copy.deepcopy(base)  # a config that names the wrapper itself: its old meaning,
    cfg.optim_wrapper.type = 'AutocastOptimWrapper'  # bf16 training, fp32 evaluation
    assert prec.apply_precision(cfg, device='cpu') == 'fp32'
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper' and 'precision' not in cfg
    cfg = copy.deepcopy(base)  # a GPU run's saved config on CPU: --amp's meaning there
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    assert prec.apply_precision(cfg, device='cpu') == 'fp32'
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    cfg = copy.deepcopy(base)
    assert prec.apply_precision(cfg, 'fp16', device='cuda') == 'fp16'
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.dtype == 'float16'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    with pytest.raises(ValueError, match='CUDA'):
        prec.apply_precision(copy.deepcopy(base), 'fp16', device='cpu')


# ----------------------------------------------------------------------------- plumbing

def test_tools_accept_the_precision_flag():
    assert _tool('train').parse_args([MASK_RCNN, '--precision', 'bf16']).precision == 'bf16'
    assert _tool('train').parse_args([MASK_RCNN, '--amp']).amp
    args = _tool('test').parse_args([MASK_RCNN, 'ckpt.pth', '--precision', 'bf16'])
    assert args.precision == 'bf16'
    assert _tool('benchmark').parse_args([MASK_RCNN, '--precision', 'fp16']).precision == 'fp16'
    args = _tool('ablate').parse_args(['spec.py', '--work-dir', 'w', '--precision', 'bf16'])
    assert args.precision == 'bf16'
    for tool, argv in (('train', [MASK_RCNN]), ('benchmark', [MASK_RCNN])):
        with pytest.raises(SystemExit):
            _tool(tool).parse_args(argv + ['--precision', 'int8'])


def test_build_runner_sets_training_and_test_precision(native_bf16, tmp_path):
    from cascade_seg.engine.runner_utils import build_runner
    runner = build_runner(MASK_RCNN, work_dir=str(tmp_path), precision='bf16',
                          cfg_options={'log_level': 'WARNING'})
    assert runner.cfg.precision == 'bf16'
    assert runner.cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    assert prec.get_inference_precision(runner.model) == 'bf16'
    runner = build_runner(MASK_RCNN, work_dir=str(tmp_path), cfg_options={
        'log_level': 'WARNING', 'precision': 'bf16'})  # the config key alone
    assert prec.get_inference_precision(runner.model) == 'bf16'
    with pytest.raises(ValueError, match='CUDA'):
        build_runner(MASK_RCNN, work_dir=str(tmp_path), precision='fp16')


def _conv_dtypes(model):
    seen = []
    model.backbone.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_inference_api_precision(native_bf16):
    import numpy as np

    from cascade_seg.apis import inference_detector, init_detector
    model = init_detector(MASK_RCNN, precision='bf16')
    assert model.inference_precision == 'bf16'
    seen = _conv_dtypes(model)
    result = inference_detector(model, np.zeros((48, 64, 3), np.uint8))
    assert seen == [torch.bfloat16]
    assert result.pred_instances.bboxes.dtype == torch.float32
    assert result.pred_instances.scores.dtype == torch.float32
    cfg = Config.fromfile(MASK_RCNN)
    cfg.precision = 'bf16'  # the config key
    assert init_detector(cfg).inference_precision == 'bf16'
    assert init_detector(cfg, precision='fp32').inference_precision == 'fp32'
    with pytest.raises(ValueError, match='CUDA'):
        init_detector(MASK_RCNN, precision='fp16')


def test_benchmark_precision(native_bf16):
    from cascade_seg.engine.benchmark import benchmark
    r = benchmark(MASK_RCNN, task='train', img_size=64, threads=1, warmup=0, runs=1,
                  flops=False, precision='bf16')
    assert r['precision'] == 'bf16' and r['loss'] > 0
    cfg = Config.fromfile(MASK_RCNN)
    cfg.precision = 'bf16'
    r = benchmark(cfg, task='inference', img_size=64, threads=1, warmup=0, runs=1, flops=False)
    assert r['precision'] == 'bf16'
    with pytest.raises(ValueError, match='CUDA'):
        benchmark(MASK_RCNN, img_size=64, threads=1, warmup=0, runs=1, precision='fp16')


def test_ablation_spec_precision(tmp_path):
    from cascade_seg.ablation.spec import build_variant_config, load_spec
    spec_path = tmp_path / 'spec.py'
    spec_path.write_text(f"base = '{MASK_RCNN}'\nprecision = 'bf16'\n"
                         "variants = [dict(name='a'), dict(name='b', overrides={"
                         "'+precision': 'fp32'})]\n")
    spec = load_spec(str(spec_path))
    a, b = (build_variant_config(spec, v) for v in spec.variants)
    assert a.precision == 'bf16' and b.precision == 'fp32'  # a variant's override wins
    spec.force_precision = 'fp32'  # tools/ablate.py --precision wins over both
    assert build_variant_config(spec, spec.variants[0]).precision == 'fp32'
    spec_path.write_text(f"base = '{MASK_RCNN}'\nprecision = 'int8'\nvariants = [dict()]\n")
    with pytest.raises(ValueError, match='precision must be one of'):
        load_spec(str(spec_path))


# ----------------------------------------------------------------------------- fp32 islands

class DtypeProbe:
    """Records the dtypes reaching the float32 islands of a model's forward."""

    def __init__(self, monkeypatch):
        from cascade_seg.models.dense_heads import fcos_head, rpn_head
        from cascade_seg.models.roi_heads import bbox_heads
        from cascade_seg.models.task_utils import assigner, box_coder
        self.seen = {}

        def record(key, *tensors):
            self.seen.setdefault(key, set()).update(t.dtype for t in tensors)

        def wrap(module, name, key, outputs=False):
            fn = getattr(module, name)

            def wrapped(*args, **kwargs):
                out = fn(*args, **kwargs)
                if outputs:
                    record(key, *(out if isinstance(out, tuple) else (out, )))
                else:
                    record(key, *[a for a in args if torch.is_tensor(a) and a.is_floating_point()])
                return out
            monkeypatch.setattr(module, name, wrapped)

        for module in (bbox_heads, rpn_head, fcos_head):   # every NMS of the detectors
            wrap(module, 'batched_nms', 'nms inputs')
        wrap(bbox_heads, 'nms', 'nms inputs')
        wrap(box_coder, 'decode_deltas', 'box decoding', outputs=True)
        wrap(box_coder, 'encode_deltas', 'box encoding', outputs=True)
        wrap(assigner, 'bbox_overlaps', 'IoU', outputs=True)


def _model(config, monkeypatch):
    model, _ = build_benchmark_model(config)
    probe = DtypeProbe(monkeypatch)
    seen = _conv_dtypes(model)
    return model, probe, seen


@pytest.mark.parametrize('config', [MASK_RCNN, HTC, CENTERMASK])
def test_float32_islands_at_inference(config, monkeypatch, native_bf16):
    model, probe, conv = _model(config, monkeypatch)
    model.eval()
    generator = model.proposal_generator
    if generator.test_cfg is not None and 'score_thr' in generator.test_cfg:  # FCOS
        generator.test_cfg = dict(generator.test_cfg, score_thr=0.0)  # detections, masks
    prec.set_inference_precision(model, 'bf16', 'cpu')
    data = synthetic_batch((96, 128), seed=0)
    with torch.no_grad():
        out = model.test_step(data)[0].pred_instances
    assert conv == [torch.bfloat16]  # autocast was on
    assert probe.seen['nms inputs'] == {torch.float32}
    if 'box decoding' in probe.seen:
        assert probe.seen['box decoding'] == {torch.float32}
    assert out.bboxes.dtype == out.scores.dtype == torch.float32
    assert len(out) > 0 and out.masks.dtype == torch.bool


@pytest.mark.parametrize('config', [MASK_RCNN, HTC, CENTERMASK])
def test_float32_islands_in_training(config, monkeypatch):
    from cascade_seg.engine.optim_wrapper import AutocastOptimWrapper
    model, probe, conv = _model(config, monkeypatch)
    model.train()
    semantic = getattr(model.roi_head, 'semantic_head', None)
    data = synthetic_batch((96, 128), seed=0, with_gt=True, num_boxes=2,
                           num_classes=model.roi_head.class_heads()[0][1].num_classes,
                           sem_classes=semantic.num_classes if semantic is not None else None)
    optim = AutocastOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0))
    with optim.optim_context(model):
        losses = model._run_forward(model.data_preprocessor(copy.deepcopy(data), True),
                                    mode='loss')
    assert conv == [torch.bfloat16]
    for name, value in losses.items():
        if 'loss' in name:
            assert value.dtype == torch.float32, name
    for key in ('nms inputs', 'IoU'):
        assert probe.seen[key] == {torch.float32}, key
    if config != CENTERMASK:  # FCOS does not encode deltas
        assert probe.seen['box encoding'] == {torch.float32}
        assert probe.seen['box decoding'] == {torch.float32}
    loss, _ = model.parse_losses(losses)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and g.isfinite().all() for g in grads)


def test_box_head_predictors_and_roi_features_are_float32():
    model, _ = build_benchmark_model(MASK_RCNN)
    model.eval()
    got = {}
    head = model.roi_head.bbox_head[0]
    head.register_forward_hook(lambda m, i, o: got.update(
        feats=i[0].dtype, cls=o[0].dtype, reg=o[1].dtype))
    mask = model.roi_head.mask_head['0']
    mask.register_forward_hook(lambda m, i, o: got.update(mask_in=i[0].dtype, mask=o.dtype))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        model.test_step(synthetic_batch((64, 64), seed=1))
    assert got == dict(feats=torch.float32, cls=torch.float32, reg=torch.float32,
                       mask_in=torch.float32, mask=torch.bfloat16)


# ----------------------------------------------------------------------------- training

@pytest.mark.slow
def test_bf16_small_model_trains():
    from cascade_seg.engine.optim_wrapper import AutocastOptimWrapper
    model, _ = build_benchmark_model(MASK_RCNN)
    model.train()
    data = synthetic_batch((96, 96), seed=3, with_gt=True, num_boxes=2,
                           num_classes=model.roi_head.bbox_head[0].num_classes)
    optim = AutocastOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    torch.manual_seed(0)
    losses = [float(model.train_step(copy.deepcopy(data), optim)['loss'].detach())
              for _ in range(15)]
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, losses
