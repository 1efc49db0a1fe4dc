"""Every command and code snippet of README.md and docs/*.md is exercised.

* Every shell command: a ``python tools/X.py ...`` line is parsed by that tool's own argument
  parser (placeholders such as CONFIG are fine) and the repository files it names exist;
  ``make`` targets, ``bash tools/*.sh`` scripts and ``pip install -e '.[extra]'`` extras exist.
* The newcomer's path runs literally, in a scratch folder that has ``configs/`` and ``tools/``:
  the README's dataset, train (on a few images), test and demo commands, the Python
  inference snippet, the ONNX export command and snippet, and the checkpoint conversion
  snippet (with small files in place of the named checkpoints and images).
* Config snippets are merged into a config and the model built; signature snippets name only
  real arguments; the TTA snippet builds its model and pipeline; the ablation spec snippet
  loads. The own-data recipe runs in tests/test_own_data.py.
"""
import ast
import glob
import os
import os.path as osp
import re
import shlex
import subprocess

import pytest
import torch
from mmengine.config import Config

from cascade_seg.engine.runner_utils import load_config

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOCS = ['README.md'] + sorted(osp.relpath(p, REPO)
                              for p in glob.glob(osp.join(REPO, 'docs', '*.md')))
EXTERNAL = ('$REF_PY', 'source')  # another environment's script; the shell's own command
SMALL = 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'


def _parseable(text):
    """A snippet with ``...`` placeholders as valid Python: ``key=...`` -> ``key=None``, a
    bare ``...`` argument -> ``etc=None``."""
    return re.sub(r'\.\.\.', 'etc=None', re.sub(r'=\s*\.\.\.', '=None', text))


def blocks(lang):
    """``(doc, line number, text)`` of every fenced block in ``lang``."""
    out = []
    for doc in DOCS:
        text = open(osp.join(REPO, doc)).read()
        for m in re.finditer(r'```(\w*)\n(.*?)```', text, re.S):
            if m.group(1) == lang:
                out.append((doc, text[:m.start()].count('\n') + 2, m.group(2)))
    return out


def commands():
    """``(doc:line, argv)`` of every shell command (continuation lines joined)."""
    out = []
    for doc, line, text in blocks('bash'):
        for k, cmd in enumerate(text.replace('\\\n', ' ').splitlines()):
            argv = shlex.split(cmd, comments=True)
            if '>' in argv:  # ... > table.csv: the shell's redirection
                argv = argv[:argv.index('>')]
            while argv and re.fullmatch(r'[A-Z_]+=\S*', argv[0]):  # GPUS=16 bash ...
                argv = argv[1:]
            if argv:
                out.append((f'{doc}:{line + k}', argv))
    return out


def _tool(name):
    from tests.test_tools import _tool as load
    return load(name)


def _check_tool(argv):
    script = argv[0]
    assert script.startswith('tools/') and osp.isfile(osp.join(REPO, script)), script
    if script.endswith('.sh'):
        assert subprocess.run(['bash', '-n', osp.join(REPO, script)]).returncode == 0
        return
    name = osp.splitext(osp.basename(script))[0]
    try:
        _tool(name).parse_args(argv[1:])
    except SystemExit as e:
        raise AssertionError(f'{script} does not accept {argv[1:]}') from e
    for arg in argv[1:]:
        if arg.startswith('configs/'):
            assert osp.exists(osp.join(REPO, arg)), f'{arg} does not exist'


def test_every_documented_command_is_valid():
    makefile = open(osp.join(REPO, 'Makefile')).read()
    pyproject = open(osp.join(REPO, 'pyproject.toml')).read()
    failures, seen = [], 0
    for where, argv in commands():
        seen += 1
        try:
            if argv[0] in EXTERNAL:
                continue
            if argv[0] == 'make':
                assert all(re.search(rf'^{t}:', makefile, re.M) for t in argv[1:]), argv
            elif argv[0] == 'python':
                _check_tool(argv[1:])
            elif argv[0] == 'torchrun':
                _check_tool([a for a in argv[1:] if not a.startswith('--nproc')])
            elif argv[0] == 'bash':
                _check_tool(argv[1:2])
            elif argv[:3] == ['pip', 'install', '-e']:
                extra = re.fullmatch(r"\.\[(\w+)\]", argv[3]).group(1)
                assert re.search(rf'^{extra} = \[', pyproject, re.M), f'no extra {extra}'
            else:
                raise AssertionError(f'unknown kind of command {argv[0]!r}')
        except Exception as e:  # noqa: BLE001 - report them all
            failures.append(f'{where}: {" ".join(argv)}\n    {type(e).__name__}: {e}')
    assert seen > 50
    assert not failures, '\n'.join(failures)


# ------------------------------------------------------------------ the newcomer's path, run
@pytest.fixture(scope='module')
def scratch(tmp_path_factory):
    """A folder like a checkout's root: configs/ and tools/, and data/synthetic made by the
    README's command."""
    root = tmp_path_factory.mktemp('newcomer')
    for name in ('configs', 'tools'):
        os.symlink(osp.join(REPO, name), root / name)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        run_documented('README.md', 'tools/make_synthetic_coco.py')
    finally:
        os.chdir(cwd)
    return root


def documented(doc, script):
    """The documented command line (argv) of ``script`` in ``doc`` (the first one)."""
    for where, argv in commands():
        if where.startswith(doc + ':') and argv[:2] == ['python', script]:
            return argv[2:]
    raise AssertionError(f'{doc} documents no {script} command')


def run_documented(doc, script, replace=None, extra=()):
    argv = [(replace or {}).get(a, a) for a in documented(doc, script)]
    return _tool(osp.splitext(osp.basename(script))[0]).main(argv + list(extra))


# a few images instead of 300 / 60 (the dataset's ``indices``), one epoch, quiet
FEW = ['train_dataloader.dataset.indices=4', 'train_dataloader.batch_size=2',
       'train_cfg.max_epochs=1', 'val_dataloader.dataset.indices=2',
       'test_dataloader.dataset.indices=2', 'model.test_cfg.rcnn.max_per_img=20',
       'log_level=WARNING']


def test_readme_train_test_demo_literally(scratch, monkeypatch):
    monkeypatch.chdir(scratch)
    assert osp.isfile('data/synthetic/val/000301.jpg')  # the image the README's demo names
    runner = run_documented('README.md', 'tools/train.py', extra=['--cfg-options', *FEW])
    assert runner.epoch == 1
    work = 'work_dirs/mask-rcnn_r18_fpn_synthetic'
    os.symlink('epoch_1.pth', f'{work}/epoch_12.pth')  # the README's test command names it
    metrics = run_documented('README.md', 'tools/test.py', extra=['--cfg-options', *FEW])
    assert 'coco/segm_mAP' in metrics
    out = run_documented('README.md', 'tools/demo.py',
                         {'CONFIG': SMALL, 'CHECKPOINT': f'{work}/epoch_12.pth'})
    assert out.pred_instances.masks.shape[-2:] == (128, 128) and osp.isfile('out.png')

    # the Python snippet of getting_started.md, with the files it names in place
    snippet = _python_block('docs/getting_started.md', 'inference_detector')
    os.symlink(f'{work}/epoch_12.pth', 'epoch_12.pth')
    os.symlink('data/synthetic/val/000301.jpg', 'img.jpg')
    scope = {}
    exec(compile(snippet, 'getting_started.md', 'exec'), scope)
    assert scope['canvas'].shape == (128, 128, 3)


def test_deployment_command_and_snippet_literally(scratch, monkeypatch):
    from cascade_seg.apis import init_detector
    monkeypatch.chdir(scratch)
    ckpt = 'work_dirs/htc_r18_fpn_synthetic/epoch_12.pth'  # the command names it
    os.makedirs(osp.dirname(ckpt), exist_ok=True)
    model = init_detector('configs/htc/htc_r18_fpn_synthetic.py')  # random weights
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    reports = run_documented('docs/deployment.md', 'tools/export_onnx.py')
    assert reports[0]['matched_fraction'] >= 0.99 and reports[0]['min_mask_iou'] >= 0.99
    snippet = _python_block('docs/deployment.md', 'OnnxDetector')
    if not osp.exists('epoch_12.pth'):
        torch.save(dict(state_dict=init_detector(SMALL).state_dict(), meta={}), 'epoch_12.pth')
    if not osp.exists('img.jpg'):
        os.symlink('data/synthetic/val/000301.jpg', 'img.jpg')
    scope = {}
    exec(compile(snippet, 'deployment.md', 'exec'), scope)
    assert set(scope['result']) == {'bboxes', 'scores', 'labels', 'masks'}


def test_checkpoint_conversion_snippet(tmp_path, monkeypatch):
    """docs/checkpoints.md's snippet on an MMDetection-named copy of a small HTC's weights."""
    from cascade_seg.apis import init_detector
    monkeypatch.chdir(tmp_path)
    model = init_detector(osp.join(REPO, 'configs/htc/htc_r18_fpn_synthetic.py'))
    mmdet = {('rpn_head.' + k[len('proposal_generator.'):] if k.startswith('proposal_generator.')
              else k): v for k, v in model.state_dict().items()}
    torch.save(dict(state_dict=mmdet, meta={}), 'htc_r50_fpn_1x_coco.pth')
    scope = dict(model=model)
    exec(compile(_python_block('docs/checkpoints.md', 'convert_mmdet'), 'checkpoints.md',
                 'exec'), scope)


# ------------------------------------------------------------------ config and other snippets
def _python_block(doc, needle):
    found = [t for d, _, t in blocks('python') if d == doc and needle in t]
    assert len(found) == 1, f'{doc}: {len(found)} python blocks with {needle!r}'
    return found[0]


def _assignments(text):
    """``[(name, value)]`` of the snippet's top-level assignments whose value is plain data
    (dicts, lists, constants), evaluated one by one."""
    out = []
    for stmt in ast.parse(_parseable(text)).body:
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            try:
                value = eval(compile(ast.Expression(stmt.value), '<doc>', 'eval'),
                             {'dict': dict, '__builtins__': {}})
            except NameError:  # calls a function: not a config fragment
                continue
            out += [(t.id, value) for t in stmt.targets]
    return out


def _build(cfg):
    from cascade_seg.registry import MODELS
    with torch.device('meta'):
        return MODELS.build(cfg.model)


def _merged(base, key, value):
    cfg = load_config(osp.join(REPO, base)) if isinstance(base, str) else base
    cfg.merge_from_dict({key: value})
    return cfg


CASCADE = 'configs/cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'
TARGETS = {'model': 'model', 'roi_head': 'model.roi_head'}


def _config_fragments():
    """Snippets that assign ``model`` / ``roi_head`` / ``rcnn`` dicts, without ``...``."""
    out = []
    for doc, line, text in blocks('python'):
        if '...' in text or 'import ' in text or '_base_' in text or 'variants' in text \
                or 'tta_model' in text:
            continue
        names = {n for n, _ in _assignments(text)}
        if names & {'model', 'roi_head', 'rcnn'} and 'etc=None' not in _parseable(text):
            out.append((f'{doc}:{line}', text))
    return out


@pytest.mark.parametrize('where, text', _config_fragments(), ids=lambda x: str(x)[:40])
def test_config_snippets_build(where, text):
    """Each assignment merged into a config builds; a block that starts with a whole
    ``roi_head`` (one with a ``type``) is a progression, merged step by step onto the R50
    Mask R-CNN."""
    statements = _assignments(text)
    progression = statements[0][0] == 'roi_head' and 'type' in statements[0][1]
    cfg = load_config(osp.join(REPO, 'configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')) \
        if progression else None
    for name, value in statements:
        if name == 'rcnn':
            key = 'model.train_cfg.rcnn' if 'assigner' in value else 'model.test_cfg.rcnn'
        else:
            key = TARGETS[name]
        cfg = _merged(cfg if progression else CASCADE, key, value)
        model = _build(cfg)
        if name == 'roi_head' and 'num_stages' in value:
            assert model.roi_head.num_stages == value['num_stages']


def _call_keywords(text):
    call = ast.parse(_parseable(text)).body[0].value
    return call.func.id, [k.arg for k in call.keywords]


def test_signature_snippets_name_real_arguments():
    import inspect

    from cascade_seg.models.detectors.generalized_rcnn import GeneralizedRCNN
    from cascade_seg.models.roi_heads.cascade_roi_head import CascadeRoIHead, split_task_cfgs
    classes = dict(CascadeRoIHead=CascadeRoIHead, TwoStageDetector=GeneralizedRCNN,
                   GeneralizedRCNN=GeneralizedRCNN)
    checked = 0
    for doc, line, text in blocks('python'):
        first = ast.parse(_parseable(text)).body[0]
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
                and getattr(first.value.func, 'id', None) in classes):
            continue
        name, keywords = _call_keywords(text)
        params = set(inspect.signature(classes[name].__init__).parameters)
        rest = [k for k in keywords if k not in params]
        if name == 'CascadeRoIHead':
            split_task_cfgs({k: None for k in rest})  # task keys: raises on an unknown one
        else:
            assert not rest, f'{doc}:{line}: {name} has no {rest}'
        checked += 1
    assert checked >= 2


def _keys_exist(doc_node, real, path):
    for key, value in doc_node.items():
        if key == 'etc':
            continue
        assert key in real, f'{path}{key} is not in the config'
        if isinstance(value, dict) and isinstance(real[key], dict):
            _keys_exist(value, real[key], f'{path}{key}.')


def test_centermask_snippet_names_the_config_keys():
    text = _python_block('docs/centermask.md', "type='CenterMask'")
    tree = ast.parse(_parseable(text))

    def to_dict(node):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'dict':
            return {k.arg: to_dict(k.value) for k in node.keywords}
        return None
    doc_model = to_dict(tree.body[0].value)
    real = load_config(osp.join(REPO, 'configs/centermask/centermask_r18_fpn_synthetic.py')).model
    _keys_exist(doc_model, real, 'model.')


def test_config_file_snippet_is_the_file():
    text = _python_block('docs/config_guide.md', 'model = _base_.cascade_delta')
    norm = (lambda t: re.sub(r'\s+', '', t))  # noqa: E731
    own = norm(open(osp.join(REPO, CASCADE)).read())
    for stmt in ast.parse(text).body:
        assert norm(ast.get_source_segment(text, stmt)) in own


def test_ablation_spec_snippet_loads(tmp_path, monkeypatch):
    from cascade_seg.ablation.spec import build_variant_config, load_spec
    monkeypatch.chdir(REPO)
    spec_file = tmp_path / 'spec.py'
    spec_file.write_text(_python_block('docs/ablations.md', 'variants = ['))
    spec = load_spec(str(spec_file))
    assert [v.name for v in spec.variants] == ['mask_first', 'mask_last', 'htc', 'zoo']
    for v in spec.variants:
        assert build_variant_config(spec, v).model


def test_shared_trunk_snippet_loads(tmp_path, monkeypatch):
    from cascade_seg.ablation.spec import build_variant_config, load_spec
    monkeypatch.chdir(REPO)
    spec_file = tmp_path / 'spec.py'
    spec_file.write_text("base = 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'\n"
                         "variants = [dict(name='a')]\n"
                         + _python_block('docs/ablations.md', 'trunk = dict('))
    spec = load_spec(str(spec_file))
    assert spec.trunk.modules == ('backbone', 'neck', 'proposal_generator') and spec.trunk.freeze
    assert build_variant_config(spec, spec.trunk.variant).train_cfg.max_epochs == 12


def test_tta_snippet_builds(monkeypatch):
    from mmengine.registry import init_default_scope

    from cascade_seg.engine.runner_utils import apply_tta
    from cascade_seg.registry import MODELS, TRANSFORMS
    cfg = load_config(osp.join(REPO, SMALL))
    for name, value in _assignments(_python_block('docs/getting_started.md', 'tta_model')):
        cfg[name] = value
    apply_tta(cfg)
    init_default_scope('cascade_seg')
    assert type(MODELS.build(cfg.model)).__name__ == 'DetTTAModel'
    pipeline = cfg.test_dataloader.dataset.pipeline
    assert len(TRANSFORMS.build(pipeline[1]).steps) == 4


def test_task_branch_snippets():
    """docs/task_branches.md: the keypoint ops run as written; the branch skeleton is the real
    KeypointBranch's (class attributes, methods and their arguments); the mixin's values are
    the file's."""
    import inspect

    from cascade_seg.models.roi_heads.branches.keypoint_branch import KeypointBranch
    from cascade_seg.models.task_utils import (heatmaps_to_keypoints, keypoint_loss,
                                               keypoint_targets)
    doc = 'docs/task_branches.md'
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[4., 6., 40., 50.], [10., 10., 30., 60.]])
    scope = dict(keypoint_targets=keypoint_targets, keypoint_loss=keypoint_loss,
                 heatmaps_to_keypoints=heatmaps_to_keypoints, pos_boxes=boxes, boxes=boxes,
                 matched_gt_keypoints=torch.tensor([[[10., 20., 2.], [30., 40., 1.]]] * 2),
                 logits=torch.randn(2, 2, 56, 56, generator=g),
                 heatmaps=torch.randn(2, 2, 56, 56, generator=g))
    exec(compile(_python_block(doc, 'keypoint_targets('), doc, 'exec'), scope)
    assert scope['xy'].shape == (2, 2, 2) and torch.isfinite(scope['loss'])

    cls = ast.parse(_python_block(doc, 'class KeypointBranch')).body[0]
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign):
            name = stmt.targets[0].id
            assert getattr(KeypointBranch, name) == ast.literal_eval(stmt.value), name
        elif isinstance(stmt, ast.FunctionDef):
            real = list(inspect.signature(getattr(KeypointBranch, stmt.name)).parameters)
            assert real == [a.arg for a in stmt.args.args], stmt.name

    (name, value), = _assignments(_python_block(doc, 'keypoint_delta = dict('))
    real = Config.fromfile(osp.join(REPO, 'configs/_base_/models/keypoint-rcnn_delta.py'))
    _same_values(value, real[name], name + '.')


def _same_values(doc_node, real, path):
    for key, value in doc_node.items():
        assert key in real, f'{path}{key} is not in the file'
        if isinstance(value, dict):
            _same_values(value, real[key], f'{path}{key}.')
        else:
            assert value == real[key], f'{path}{key}: {value!r} in the docs, {real[key]!r}'


def test_every_python_block_is_exercised():
    """Each python block is one of the kinds the tests above run (or the recipe)."""
    fragments = {where for where, _ in _config_fragments()}
    for doc, line, text in blocks('python'):
        handled = (f'{doc}:{line}' in fragments or 'import ' in text or '_base_' in text or
                   'variants' in text or 'tta_model' in text or "type='CenterMask'" in text
                   or 'trunk = dict(' in text
                   or doc == 'docs/task_branches.md'
                   or isinstance(ast.parse(_parseable(text)).body[0], ast.Expr))
        assert handled, f'{doc}:{line} is not exercised by a test'
