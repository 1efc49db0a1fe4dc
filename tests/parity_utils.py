"""Helpers shared by the torchvision and MMDetection parity tests.

Building our model from a config with converted weights, recording what the RoI heads compute,
and comparisons with messages that say where two pipelines part (max abs / rel error, which
detections do not match).
"""
import os
import os.path as osp
import subprocess
import threading

import torch
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ----------------------------------------------------------------------------- model

def build_from_config(config, cfg_options=None):
    """Our detector (eval mode, fp32, CPU) from a config path relative to the repo."""
    import cascade_seg.models  # noqa: F401 - registers the modules
    from cascade_seg.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return MODELS.build(cfg.model).eval()


def load_converted(model, state_dict, unmapped=()):
    """Load a converted state dict, failing with the full key report on any mismatch."""
    from cascade_seg.utils import align_to_model
    sd, report = align_to_model(state_dict, model.state_dict(), unmapped)
    assert report.ok, f'converted checkpoint does not fit the model:\n{report}'
    model.load_state_dict(sd, strict=True)
    return report


def record_head_calls(model):
    """Forward hooks on every box and mask head of ``model.roi_head``: a list that fills with
    ``dict(kind='bbox'|'mask', name, inputs=[shapes], outputs=[tensors])`` in call order.
    Returns ``(calls, remove)``."""
    from cascade_seg.models.roi_heads.bbox_heads import ConvFCBBoxHead
    from cascade_seg.models.roi_heads.mask_heads import FCNMaskHead
    calls, handles = [], []

    def flat(o):
        if torch.is_tensor(o):
            return [o.detach().clone()]
        if isinstance(o, (list, tuple)):
            return [t for x in o for t in flat(x)]
        return []

    for name, mod in model.roi_head.named_modules():
        kind = ('bbox' if isinstance(mod, ConvFCBBoxHead) else
                'mask' if isinstance(mod, FCNMaskHead) else None)
        if kind:
            handles.append(mod.register_forward_hook(
                lambda m, i, o, kind=kind, name=name: calls.append(
                    dict(kind=kind, name=name, inputs=[tuple(t.shape) for t in flat(i)],
                         outputs=flat(o)))))

    def remove():
        for h in handles:
            h.remove()
    return calls, remove


# ----------------------------------------------------------------------------- comparisons

def max_errors(a, b):
    """``(max abs error, max abs error / max |b|)`` of two same-shaped tensors."""
    a, b = a.detach().double(), b.detach().double()
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    return err, err / max(scale, 1e-12)


def assert_tensor_close(name, ours, ref, rel=1e-4):
    """Same shape and ``max|ours - ref| <= rel * max|ref|`` (scale-aware: random-weight
    activations can be large)."""
    assert tuple(ours.shape) == tuple(ref.shape), \
        f'{name}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}'
    err, rerr = max_errors(ours, ref)
    assert rerr <= rel, f'{name}: max abs error {err:.3g} ({rerr:.3g} of max |ref|) > {rel}'


def mask_iou(a, b):
    """IoU of two bool masks ``(N, H, W)`` pooled over all instances and per instance."""
    a, b = a.bool().flatten(1), b.bool().flatten(1)
    inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
    per = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    pooled = (inter.sum() / union.sum()).item() if union.sum() > 0 else 1.0
    return pooled, per


def match_detections(ours, ref, box_rtol=1e-3, score_atol=1e-4):
    """Pair each reference detection with one of ours of the same label, score within
    ``score_atol`` and box within ``box_rtol`` (relative to the box size, at least 1e-3 px).

    Order-free, so near-equal scores sorted differently do not matter. ``ours``/``ref``: dicts
    of ``bboxes, scores, labels``. Returns ``(pairs (ref_i, our_j), unmatched ref indices)``.
    """
    ob, os_, ol = ours['bboxes'].double(), ours['scores'].double(), ours['labels']
    used = torch.zeros(len(os_), dtype=torch.bool)
    pairs, unmatched = [], []
    for i in torch.argsort(ref['scores'], descending=True).tolist():
        rb = ref['bboxes'][i].double()
        tol = box_rtol * torch.maximum((rb[2:] - rb[:2]).abs().max(), rb.abs().max()) + 1e-3
        ok = (~used & (ol == ref['labels'][i]) & ((os_ - ref['scores'][i].double()).abs()
              <= score_atol) & ((ob - rb).abs().max(1).values <= tol))
        cand = torch.nonzero(ok).flatten()
        if cand.numel() == 0:
            unmatched.append(i)
            continue
        j = cand[(os_[cand] - ref['scores'][i].double()).abs().argmin()].item()
        used[j] = True
        pairs.append((i, j))
    return pairs, unmatched


def permutation(pairs, n):
    """Index of our row for each reference row, from ``(ref_i, our_j)`` pairs."""
    perm = torch.full((n,), -1, dtype=torch.long)
    for i, j in pairs:
        perm[i] = j
    return perm


def assert_same_detections(ours, ref, box_rtol=1e-3, score_atol=1e-4, min_mask_iou=0.99,
                           label_offset=0):
    """Same count; every detection paired (labels equal after ``label_offset`` is added to
    ours, boxes, scores); pooled mask IoU over the pairs > ``min_mask_iou``."""
    ours = dict(ours, labels=ours['labels'] + label_offset)
    n_ours, n_ref = len(ours['scores']), len(ref['scores'])
    pairs, unmatched = match_detections(ours, ref, box_rtol, score_atol)
    msg = ''
    if unmatched:
        i = unmatched[0]
        d = (ours['bboxes'].double() - ref['bboxes'][i].double()).abs().max(1).values
        j = d.argmin().item() if len(d) else None
        near = (f'nearest ours: box {ours["bboxes"][j].tolist()} score '
                f'{ours["scores"][j].item():.6f} label {ours["labels"][j].item()}'
                if j is not None else 'no detections of ours')
        msg = (f'{len(unmatched)} of {n_ref} reference detections unmatched; first: box '
               f'{ref["bboxes"][i].tolist()} score {ref["scores"][i].item():.6f} label '
               f'{ref["labels"][i].item()}; {near}')
    assert n_ours == n_ref and not unmatched, f'{n_ours} detections vs {n_ref} reference. {msg}'
    if 'masks' in ref and min_mask_iou is not None:
        ri, oj = (torch.tensor(x, dtype=torch.long) for x in zip(*pairs)) if pairs else \
            (torch.zeros(0, dtype=torch.long),) * 2
        pooled, per = mask_iou(ours['masks'][oj], ref['masks'][ri])
        assert pooled > min_mask_iou, \
            f'mask IoU {pooled:.4f} <= {min_mask_iou} (worst instance {per.min().item():.3f})'
    return pairs


# ------------------------------------------------------------------------ MMDetection reference

def find_mmdet_python():
    """The MMDetection 3.3 reference interpreter: ``$CASCADE_SEG_MMDET_PY``, else the one
    ``../shared/mmdet_ref/setup.sh`` (beside the repo) builds or finds; ``(path, why_not)``."""
    py = os.environ.get('CASCADE_SEG_MMDET_PY')
    if py:
        return (py, None) if osp.isfile(py) else (None, f'CASCADE_SEG_MMDET_PY={py} not found')
    setup = osp.join(REPO, '..', 'shared', 'mmdet_ref', 'setup.sh')
    if not osp.isfile(setup):
        return None, ('no MMDetection reference: set CASCADE_SEG_MMDET_PY or provide '
                      f'{osp.normpath(setup)}')
    res = subprocess.run(['bash', setup], capture_output=True, text=True, timeout=900)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines or not osp.isfile(lines[-1]):
        return None, f'mmdet reference setup failed: {res.stderr.strip()[-500:]}'
    return lines[-1], None


def mmdet_ref_script():
    script = os.environ.get('CASCADE_SEG_MMDET_REF_SCRIPT') or \
        osp.join(REPO, '..', 'shared', 'mmdet_ref', 'mmdet_ref.py')
    if not osp.isfile(script):
        raise FileNotFoundError(f'mmdet_ref.py not found at {osp.normpath(script)} '
                                '(set CASCADE_SEG_MMDET_REF_SCRIPT)')
    return script


# Runs in the reference interpreter: mmdet_ref.py's model building and evaluation dump, minus
# its training-step dump (a third of its time), which the parity tests do not use.
_DUMP_DRIVER = """
import logging, os, sys, warnings
import torch
script, size, threads, out_dir, *aliases = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
import mmdet_ref
from mmengine.logging import MMLogger
warnings.filterwarnings('ignore')
torch.set_num_threads(int(threads))
MMLogger.get_current_instance().setLevel(logging.WARNING)
size = (int(size), int(size))
for alias in aliases:
    model, cfg, _ = mmdet_ref.build_model(alias, 0, 0.0, None, True, size)
    dump = dict(model=alias, config_text=cfg.pretty_text, randomize_norm=True,
                state_dict={k: v.detach().clone() for k, v in model.state_dict().items()})
    dump['eval'] = mmdet_ref.eval_dump(model, size, 0)
    path = os.path.join(out_dir, f'ref_{alias}.pt')
    torch.save(dump, path)
    print(f'[{alias}] dumped -> {path}', flush=True)
"""


class MMDetDumps:
    """Reference dumps (seed 0, randomised norms, score threshold 0: every detection kept) made
    by ONE background run of the reference interpreter, so that it computes the next model while
    we test the previous one. ``get(alias)`` waits for that alias's dump and loads it."""

    def __init__(self, python, aliases, out_dir, size=320, threads=1):
        self.out_dir = str(out_dir)
        self.done = {a: threading.Event() for a in aliases}
        cmd = [python, '-c', _DUMP_DRIVER, mmdet_ref_script(), str(size), str(threads),
               self.out_dir, *aliases]
        self.cmd = f'{python} -c <mmdet_ref dump driver> {" ".join(cmd[3:])}'
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.log = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.append(line)
            for alias, event in self.done.items():
                if line.startswith(f'[{alias}] dumped'):
                    event.set()
        self.proc.wait()
        for event in self.done.values():  # a crash wakes every waiter
            event.set()

    def get(self, alias, timeout=500):
        if not self.done[alias].wait(timeout):
            raise TimeoutError(f'no reference dump for {alias} after {timeout}s: {self.cmd}')
        path = osp.join(self.out_dir, f'ref_{alias}.pt')
        if not osp.isfile(path):
            raise RuntimeError(f'{self.cmd} failed:\n' + ''.join(self.log)[-3000:])
        return torch.load(path, map_location='cpu', weights_only=False)  # our own file

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
