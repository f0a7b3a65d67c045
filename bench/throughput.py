#!/usr/bin/env python
"""Throughput of every method against its backbone bound; torch.compile and torch.export checks.

For each registered method variant (by default the paper's backbone at the paper's resolution and the resnet18
variant at 224), on the current device:

- inference: the method's eval `forward` vs the backbone bound, both under `torch.inference_mode()`;
- training: `forward_train` + `loss` + backward + SGD step vs the bound's passes with backward + SGD step;
- peak memory of each, weights, gradients and optimizer state included (CUDA: `torch.cuda.max_memory_allocated`;
  CPU: peak live tensor bytes from torch's `MemTracker`, approximate: tensors only, no oneDNN workspaces or
  allocator overhead);
- `overhead = method time / bound time` (target: inference <= 1.15, training <= 1.25);
- with `--compile`: `torch.compile` of the eval forward, checked against eager (allclose), and the timed passes
  use the compiled modules;
- `torch.export.export(model.eval(), (x,))` of the eval forward (skip with `--no-export`): success, or the
  error's first line.

The backbone bound is the plain backbone passes a method cannot avoid (see `BOUNDS` below): the same timm
backbone (a fresh `create_backbone(<backbone>)`, same weights layout and memory format), called with
`forward_features` on the shapes the method feeds it. Timing: `--warmup` untimed iterations, then the median of
`--iters` timed ones (`time.perf_counter`, `torch.cuda.synchronize()` on CUDA), method and bound interleaved so
that load from other processes on a shared machine hits both alike.

    python bench/throughput.py --quick                                   # CPU smoke: resnet18 variants, 2 images
    python bench/throughput.py --variants s3n_resnet18 --batch-size 8 --iters 5
    python bench/throughput.py --device cuda --amp bf16 --channels-last --compile --batch-size 16

Results are merged into `bench/results/throughput_<device>.json` (one entry per variant and setting).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (PAPER_SETUP, RESULTS_DIR, SMALL_BACKBONE, SMALL_RESOLUTION, merge_results,  # noqa: E402
                     registered_variants, run_metadata, split_variant)

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from timm_fgvc.catalog import METHODS as CATALOG  # noqa: E402
from timm_fgvc.models import create_backbone  # noqa: E402
from timm_fgvc.models.hsm import SaliencyBranch  # noqa: E402

INFERENCE_TARGET, TRAINING_TARGET = 1.15, 1.25


# --------------------------------------------------------------------------------------------------------------
# The backbone bound of each method: the plain backbone passes it cannot avoid
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    """One plain backbone pass: `batch_factor * B` images of `size` px; `input_grad`: the input needs a gradient
    (in training, a method whose parameters learn through a resampled image must back-propagate into it)."""
    batch_factor: int
    size: int
    input_grad: bool = False
    module: str = 'backbone'  # 'backbone' or 'saliency_branch' (HSM's AlexNet conv1-4 branch)


def _s3n_bound(model: nn.Module, size: int, training: bool) -> List[Pass]:
    # O on the input, then D and C on the two resampled images of the input's size, batched as the model does.
    # beta1/beta2 learn through the resampled images (grid_sample -> grid -> sampling maps -> Eq. 5), so in
    # training the 2B pass must also back-propagate into its input.
    return [Pass(1, size), Pass(2, size, input_grad=True)]


def _lfd_bound(model: nn.Module, size: int, training: bool) -> List[Pass]:
    # the image at full size, then m = 6 regions cropped (roi_align, no grad into the image) and zoomed to 224
    # at the paper's 448 (half the input side in general)
    return [Pass(1, size), Pass(model.num_regions, model.zoom_size(size))]


def _caa_bound(model: nn.Module, size: int, training: bool) -> List[Pass]:
    # one pass per scale at the input size (each scale zooms its crop back to the input size); training counts
    # every scale with backward (joint fine-tuning; a staged run back-propagates through fewer)
    scales = int(getattr(model, 'num_scales', 3))
    return [Pass(scales, size)]


def _hsm_bound(model: nn.Module, size: int, training: bool) -> List[Pass]:
    # one backbone pass plus the saliency branch (AlexNet conv1-4 shapes, Sec. 3): both are plain CNN passes the
    # method cannot avoid; the modulation itself (l * (s + 1)) is the method's overhead
    return [Pass(1, size), Pass(1, size, module='saliency_branch')]


def _ssanet_bound(model: nn.Module, size: int, training: bool) -> List[Pass]:
    # the image (navigator + anchors on its map), then the parts cropped and zoomed to half the input side: in
    # training all the proposals the part head classifies (P = 14; the top K = 4 are the parts), in inference the K
    # parts; the paper's separate scale candidates ('crops') add K * (S - 1) crops (the middle candidate is the
    # part's own crop), roi_align on a shared map adds nothing. All the crops are one pass, as the model batches
    # them: on one CPU thread a batch's size alone moves its time (resnet50, 40 crops at 224 px: 6.7 s in one
    # batch, 4.7 s in batches of 8), so a bound batched otherwise would time the batching, not the method.
    parts = int(getattr(model, 'num_parts', 4))
    crops = int(getattr(model, 'num_proposals', parts)) if training else parts
    if getattr(model, 'candidate_features', 'roi_align') == 'crops':
        crops += parts * (int(getattr(model, 'num_scales', 5)) - 1)
    return [Pass(1, size), Pass(crops, size // 2)]


BOUNDS: Dict[str, tuple] = {
    's3n': (_s3n_bound, '3 passes at the input size (B + 2B images; the 2B pass back-propagates into its input '
                        'in training)'),
    'lfd': (_lfd_bound, '1 pass at the input size + m = 6 region passes at half the input size (224 at 448)'),
    'caa': (_caa_bound, '1 pass per scale (3) at the input size'),
    'hsm': (_hsm_bound, '1 backbone pass + the AlexNet conv1-4 saliency branch, both at the input size'),
    'ssanet': (_ssanet_bound, '1 pass at the input size + one pass at half the input size over the K = 4 parts (in '
                              'training the P = 14 proposals the part head classifies) and, with separate candidate '
                              'crops (the paper\'s), K * (S - 1) = 16 scale candidates'),
}


class BackboneBound(nn.Module):
    """The bound as a module: `run(inputs, target)` does every pass on inputs of the pass's shape.

    Each backbone pass ends as a plain classifier does (global average pool, one linear head, cross-entropy
    when a target is given), so its backward carries the same kind of gradients as the method's heads do; the
    head and loss cost next to nothing. The inputs are made outside the timed region.
    """

    def __init__(self, backbone_name: str, passes: List[Pass], num_classes: int, in_chans: int = 3,
                 backbone_args: Optional[dict] = None):
        super().__init__()
        self.passes = passes
        # the method's own backbone arguments (a ViT's img_size, output_stride), so the bound is the same network
        self.backbone = create_backbone(backbone_name, in_chans=in_chans, **(backbone_args or {}))
        self.head = nn.Linear(self.backbone.num_features, num_classes)
        if any(p.module == 'saliency_branch' for p in passes):
            self.saliency = SaliencyBranch()  # the model's own saliency branch, a plain CNN pass

    def make_inputs(self, batch: int, device, dtype, channels_last: bool, training: bool) -> List[torch.Tensor]:
        inputs = []
        for p in self.passes:
            x = torch.randn(p.batch_factor * batch, 3, p.size, p.size, device=device, dtype=dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            inputs.append(x.requires_grad_(training and p.input_grad))
        return inputs

    def run(self, inputs: List[torch.Tensor], target: Optional[torch.Tensor] = None,
            forward_features: Optional[Callable] = None) -> torch.Tensor:
        """The summed loss of the passes (with `target`), or the last pass's logits (without)."""
        forward_features = forward_features or self.backbone.forward_features
        total, logits = 0., None
        for p, x in zip(self.passes, inputs):
            if p.module == 'saliency_branch':
                total = total + self.saliency(x).float().mean()
                continue
            logits = self.head(forward_features(x).mean((2, 3)))
            if target is not None:
                total = total + F.cross_entropy(logits.float(), target.repeat(p.batch_factor))
        return total if target is not None else logits

    def describe(self, passes: Optional[List[Pass]] = None) -> str:
        return ' + '.join(f"{p.batch_factor}B x {p.size}px{' (input grad)' if p.input_grad else ''}"
                          f"{' [' + p.module + ']' if p.module != 'backbone' else ''}" for p in passes or self.passes)


# --------------------------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_pair(fn_a: Callable[[], None], fn_b: Callable[[], None], device: torch.device, warmup: int,
              iters: int) -> tuple:
    """Wall and process-CPU times of `fn_a` and `fn_b`: `((wall_a, cpu_a), (wall_b, cpu_b))`.

    `warmup` untimed calls of each first; then the two are interleaved (a b, b a, a b, ...) so that load from
    other processes on a shared machine hits both alike. The process CPU time (`time.process_time`, all
    threads) is what a CPU run costs whatever else the machine is doing.
    """
    for _ in range(warmup):
        fn_a()
        fn_b()
    _sync(device)
    times = (([], []), ([], []))
    for i in range(iters):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            fn = (fn_a, fn_b)[which]
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times[which][0].append(time.perf_counter() - start)
            times[which][1].append(time.process_time() - start_cpu)
    return times


class TensorMemory(TorchDispatchMode):
    """Live and peak bytes of the CPU tensor storages that ops create while the mode is active.

    Storages that exist before (weights, buffers, gradients, optimizer state, inputs: pass them as `held`)
    count once in the baseline, never again; a new storage counts from the op that made it until it is freed.
    """

    def __init__(self, held: List[torch.Tensor] = ()):
        super().__init__()
        self._ids = set()
        self._held = []  # keeps the held storages alive, so their ids stay unique
        self.baseline = 0
        for t in held:
            st = t.untyped_storage()
            if id(st) not in self._ids and st.device.type == 'cpu':
                self._ids.add(id(st))
                self._held.append(st)
                self.baseline += st.nbytes()
        self.live = self.peak = 0

    def _free(self, nbytes: int, key: int) -> None:
        self.live -= nbytes
        self._ids.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == 'cpu':
                st = t.untyped_storage()
                key = id(st)
                if key in self._ids:
                    continue
                nbytes = st.nbytes()
                self._ids.add(key)
                weakref.finalize(st, self._free, nbytes, key)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
        return out


def _held_tensors(*objects) -> List[torch.Tensor]:
    held = []
    for obj in objects:
        if isinstance(obj, nn.Module):
            held += list(obj.parameters()) + list(obj.buffers())
            held += [p.grad for p in obj.parameters() if p.grad is not None]
        elif isinstance(obj, torch.optim.Optimizer):
            held += [v for state in obj.state.values() for v in state.values() if torch.is_tensor(v)]
        elif torch.is_tensor(obj):
            held.append(obj)
        elif isinstance(obj, (list, tuple)):
            held += _held_tensors(*obj)
    return held


def peak_memory(fn: Callable[[], None], device: torch.device, *held) -> dict:
    """Peak memory of one call of `fn`, in MiB, counting the weights, gradients, optimizer state and inputs.

    CUDA: `torch.cuda.max_memory_allocated`. CPU (approximate): the weights, buffers, optimizer state and inputs
    `held` plus the peak of live tensor storages the call creates, tracked by a `TorchDispatchMode`; it counts
    tensors only, not oneDNN scratch buffers or allocator overhead.
    """
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {'peak_mib': torch.cuda.max_memory_allocated(device) / 2 ** 20,
                'how': 'torch.cuda.max_memory_allocated'}
    try:
        tracker = TensorMemory(_held_tensors(*held))
        with tracker:
            fn()
    except Exception as e:  # report, do not fail the benchmark
        return {'peak_mib': None, 'error': first_line(e)}
    return {'peak_mib': (tracker.baseline + tracker.peak) / 2 ** 20, 'held_mib': tracker.baseline / 2 ** 20,
            'how': 'CPU, approximate: held tensors + peak of live tensor storages created by the call '
                   '(TorchDispatchMode), no oneDNN scratch or allocator overhead'}


def summary(times: tuple, batch: int) -> dict:
    wall, cpu = times
    median = statistics.median(wall)
    return {'median_s': median, 'images_per_s': batch / median, 'min_s': min(wall), 'max_s': max(wall),
            'cpu_median_s': statistics.median(cpu), 'times_s': [round(t, 5) for t in wall]}


def print_result(kind: str, result: dict) -> None:
    cpu = f", from CPU times {result['overhead_cpu_time']:.3f}" if 'overhead_cpu_time' in result else ''
    print(f"  {kind + ':':11s}method {result['method']['images_per_s']:.2f} img/s, bound "
          f"{result['bound']['images_per_s']:.2f} img/s, overhead {result['overhead']:.3f} (from min times "
          f"{result['overhead_min']:.3f}{cpu}; target <= {result['target']})", flush=True)


def overheads(result: dict, device: torch.device) -> None:
    """`overhead` from the median wall times; on CPU also from the process CPU times (robust to other load)."""
    method, bound = result['method'], result['bound']
    result['overhead'] = method['median_s'] / bound['median_s']
    result['overhead_min'] = method['min_s'] / bound['min_s']
    if device.type == 'cpu':
        result['overhead_cpu_time'] = method['cpu_median_s'] / bound['cpu_median_s']


def time_against_bound(kind: str, method_fn: Callable[[], None], bound_fn: Callable[[], None],
                       device: torch.device, args, batch: int, target: float) -> dict:
    """Time method and bound interleaved, summarise both, add the overheads and the target, print."""
    method_times, bound_times = time_pair(method_fn, bound_fn, device, args.warmup, args.iters)
    result = {'method': summary(method_times, batch), 'bound': summary(bound_times, batch)}
    overheads(result, device)
    result['target'] = target
    print_result(kind, result)
    return result


# --------------------------------------------------------------------------------------------------------------
# One variant
# --------------------------------------------------------------------------------------------------------------
def autocast_ctx(device: torch.device, amp: str):
    if amp == 'none':
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}[amp])


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


def compare(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> dict:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    diff = (a - b).abs()
    return {'allclose': bool(torch.allclose(a, b, rtol=rtol, atol=atol)), 'max_abs_diff': float(diff.max()),
            'rtol': rtol, 'atol': atol, 'same_argmax': bool((a.argmax(-1) == b.argmax(-1)).all())}


def export_check(model: nn.Module, x: torch.Tensor) -> dict:
    """`torch.export.export` of the eval forward (fp32, no autocast); the exported program must match eager."""
    model.eval()
    start = time.perf_counter()
    try:
        program = torch.export.export(model, (x,))
    except Exception as e:  # report, do not stop the benchmark
        return {'ok': False, 'error': first_line(e), 'seconds': time.perf_counter() - start}
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        match = compare(program.module()(x), model(x), rtol=1e-4, atol=1e-4)
    report = {'ok': True, 'seconds': seconds, 'matches_eager': match}
    try:  # the same with a symbolic batch size (static spatial size)
        dynamic = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch', min=2)},))
        x3 = torch.cat([x, x[:1]])
        with torch.inference_mode():
            report['dynamic_batch'] = {'ok': True, 'matches_eager': compare(dynamic.module()(x3), model(x3),
                                                                            rtol=1e-4, atol=1e-4)}
    except Exception as e:
        report['dynamic_batch'] = {'ok': False, 'error': first_line(e)}
    return report


def compile_check(model: nn.Module, x: torch.Tensor, amp: str, device: torch.device, mode: Optional[str]) -> tuple:
    """`torch.compile` of the eval forward; returns (report, compiled module or None)."""
    model.eval()
    start = time.perf_counter()
    try:
        compiled = torch.compile(model, mode=mode)
        with torch.inference_mode(), autocast_ctx(device, amp):
            out_compiled = compiled(x)
            _sync(device)
            seconds = time.perf_counter() - start
            out_eager = model(x)
    except Exception as e:
        return {'ok': False, 'error': first_line(e), 'seconds': time.perf_counter() - start}, None
    tol = 1e-3 if amp == 'none' else 5e-2
    return {'ok': True, 'first_call_seconds': seconds,
            'matches_eager': compare(out_compiled, out_eager, rtol=tol, atol=tol)}, compiled


def bench_variant(name: str, size: int, args, device: torch.device) -> dict:
    method, _ = split_variant(name)
    bound_fn, bound_text = BOUNDS[method]
    batch = args.batch_size
    torch.manual_seed(args.seed)
    model = timm.create_model(name, num_classes=args.num_classes).to(device)
    passes = {phase: bound_fn(model, size, phase == 'training') for phase in ('inference', 'training')}
    bound = BackboneBound(model.backbone_name, passes['inference'], args.num_classes,
                          backbone_args=getattr(model, 'backbone_args', None)).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    bound = bound.to(memory_format=memory_format)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (batch,), device=device)
    entry = {
        'variant': name, 'method': method, 'method_name': CATALOG[method], 'backbone': model.backbone_name,
        'img_size': size, 'batch_size': batch, 'amp': args.amp, 'channels_last': args.channels_last,
        'compile': args.compile, 'num_classes': args.num_classes, 'warmup': args.warmup, 'iters': args.iters,
        'flush_denormal': bool(args.flush_denormal and device.type == 'cpu'), 'threads': torch.get_num_threads(),
        'params_m': sum(p.numel() for p in model.parameters()) / 1e6,
        'bound': {'definition': bound_text, 'passes': bound.describe(passes['training']),
                  **({'inference_passes': bound.describe()} if passes['inference'] != passes['training'] else {})},
        'paper_variant': (model.backbone_name, size) == PAPER_SETUP[method],
    }
    print(f'\n== {name} @ {size}px, batch {batch}, amp {args.amp}, channels_last {args.channels_last}, '
          f"compile {args.compile}; bound: {entry['bound']['passes']}"
          f"{'; inference ' + entry['bound']['inference_passes'] if 'inference_passes' in entry['bound'] else ''}",
          flush=True)

    # --- compile / export checks (eval forward) ---
    infer_model, bound_features = model, None
    if args.compile:
        report, compiled = compile_check(model, x, args.amp, device, args.compile_mode)
        entry['torch_compile'] = report
        print(f'  torch.compile: {json.dumps(report)}', flush=True)
        if compiled is not None:
            infer_model = compiled
            bound_features = torch.compile(bound.backbone.forward_features, mode=args.compile_mode)
    if args.export:
        entry['torch_export'] = export_check(model, x)
        print(f"  torch.export: {json.dumps(entry['torch_export'])}", flush=True)

    # --- inference ---
    model.eval()
    bound.eval()
    bound_inputs = bound.make_inputs(batch, device, x.dtype, args.channels_last, training=False)

    def method_infer():
        with torch.inference_mode(), autocast_ctx(device, args.amp):
            infer_model(x)

    def bound_infer():
        with torch.inference_mode(), autocast_ctx(device, args.amp):
            bound.run(bound_inputs, None, bound_features)

    entry['inference'] = time_against_bound('inference', method_infer, bound_infer, device, args, batch,
                                            INFERENCE_TARGET)
    if not args.no_memory:
        entry['memory_inference'] = {'method': peak_memory(method_infer, device, model, x),
                                     'bound': peak_memory(bound_infer, device, bound, bound_inputs)}

    # --- training ---
    model.train()
    bound.train()
    bound.passes = passes['training']
    bound_inputs = bound.make_inputs(batch, device, x.dtype, args.channels_last, training=True)
    method_opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    bound_opt = torch.optim.SGD(bound.parameters(), lr=1e-4, momentum=0.9)
    forward_train = model.forward_train
    if args.compile and entry.get('torch_compile', {}).get('ok'):
        forward_train = torch.compile(model.forward_train, mode=args.compile_mode)

    def method_step():
        with autocast_ctx(device, args.amp):
            out = forward_train(x, y)
            loss = model.loss(out, y)['loss']
        loss.backward()
        method_opt.step()
        method_opt.zero_grad(set_to_none=True)

    def bound_step():
        with autocast_ctx(device, args.amp):
            loss = bound.run(bound_inputs, y, bound_features)
        loss.backward()
        bound_opt.step()
        bound_opt.zero_grad(set_to_none=True)
        for t in bound_inputs:
            t.grad = None

    entry['training'] = time_against_bound('training', method_step, bound_step, device, args, batch,
                                           TRAINING_TARGET)
    if not args.no_memory:
        entry['memory_training'] = {'method': peak_memory(method_step, device, model, method_opt, x),
                                    'bound': peak_memory(bound_step, device, bound, bound_opt, bound_inputs)}
        mi, mt = entry['memory_inference'], entry['memory_training']
        fmt = lambda m: 'n/a' if m.get('peak_mib') is None else f"{m['peak_mib']:.0f}"  # noqa: E731
        print(f"  peak memory (MiB): inference method {fmt(mi['method'])} / bound {fmt(mi['bound'])}; "
              f"training method {fmt(mt['method'])} / bound {fmt(mt['bound'])}", flush=True)
    entry['within_target'] = bool(entry['inference']['overhead'] <= INFERENCE_TARGET
                                  and entry['training']['overhead'] <= TRAINING_TARGET)

    if args.profile:
        entry['profile'] = profile_variant(name, method_infer, method_step, device, args)
    del model, bound, method_opt, bound_opt
    gc.collect()
    return entry


def profile_variant(name: str, infer: Callable, step: Callable, device: torch.device, args) -> dict:
    """torch.profiler tables of one inference call and one training step, sorted by self device/CPU time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    sort_by = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    tables = {}
    for label, fn in (('inference', infer), ('training', step)):
        fn()  # warm
        _sync(device)
        with profile(activities=activities) as prof:
            fn()
            _sync(device)
        table = prof.key_averages().table(sort_by=sort_by, row_limit=args.profile_rows)
        tables[label] = table
        print(f'\n-- profile {name} {label} (sorted by {sort_by}) --\n{table}', flush=True)
    out = Path(args.profile_dir) / f'profile_{name}_{device.type}.txt'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n\n'.join(f'## {k}\n{v}' for k, v in tables.items()))
    return {'file': str(out), 'sort_by': sort_by}


# --------------------------------------------------------------------------------------------------------------
def default_size(name: str) -> int:
    """A variant's own input size: 224 for the resnet18 variant, else its pretrained_cfg's (the paper's)."""
    method, backbone = split_variant(name)
    if backbone == SMALL_BACKBONE:
        return SMALL_RESOLUTION
    cfg = timm.models.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else PAPER_SETUP[method][1]


def select_variants(args) -> List[tuple]:
    """(variant, resolution) pairs from `--variants`: 'paper' (the paper's backbone at the paper's resolution),
    'small' (the resnet18 variant at 224), 'all' (every registered variant at its own size) or names."""
    registered = registered_variants(args.methods)
    chosen = []
    for item in args.variants:
        if item in ('paper', 'small', 'all'):
            for name in registered:
                method, backbone = split_variant(name)
                paper_backbone, paper_size = PAPER_SETUP[method]
                if item in ('paper', 'all') and backbone == paper_backbone:
                    chosen.append((name, paper_size))
                elif item in ('small', 'all') and backbone == SMALL_BACKBONE:
                    chosen.append((name, SMALL_RESOLUTION))
                elif item == 'all':
                    chosen.append((name, default_size(name)))
        elif item in registered:
            chosen.append((item, default_size(item)))
        else:
            raise SystemExit(f'Unknown variant {item!r}; registered: {registered}.')
    if args.img_size:
        chosen = [(name, args.img_size) for name, _ in chosen]
    return list(dict.fromkeys(chosen))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--methods', nargs='*', default=None, help=f'method prefixes (default: all of {list(PAPER_SETUP)})')
    p.add_argument('--variants', nargs='*', default=['paper', 'small'],
                   help="'paper' (paper backbone at paper resolution), 'small' (resnet18 at 224), 'all', or names")
    p.add_argument('--img-size', type=int, default=None, help='override every variant\'s resolution')
    p.add_argument('--batch-size', type=int, default=None, help='default 16 on CUDA, 4 on CPU')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--num-classes', type=int, default=200)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--amp', choices=('none', 'bf16', 'fp16'), default='none',
                   help='autocast dtype (fp16 is timed without a GradScaler)')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile', action='store_true', help='torch.compile the eval forward (checked against eager), '
                   'the bound, and forward_train; the timings then use the compiled modules')
    p.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. 'max-autotune'")
    p.add_argument('--no-export', dest='export', action='store_false', help='skip the torch.export check')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurements')
    p.add_argument('--profile', action='store_true', help='torch.profiler tables of the method (inference, training)')
    p.add_argument('--profile-rows', type=int, default=25)
    p.add_argument('--profile-dir', default=tempfile.gettempdir())
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    p.add_argument('--flush-denormal', action='store_true',
                   help='torch.set_flush_denormal(True) (CPU): denormal gradients make the backward of randomly '
                        'initialised nets slow in a data-dependent way on x86, which blurs method / bound ratios')
    p.add_argument('--quick', action='store_true',
                   help='CPU smoke run: resnet18 variants at 224, batch 2, 1 warm-up + 2 timed iterations; '
                        'results go to a temp file unless --out is given')
    p.add_argument('--out', default=None, help='results JSON (default bench/results/throughput_<device>.json)')
    args = p.parse_args(argv)
    if args.quick:
        args.variants = ['small'] if args.variants == ['paper', 'small'] else args.variants
        args.batch_size = args.batch_size or 2
        args.warmup, args.iters = 1, 2
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        print('WARNING: this CPU cannot flush denormals; --flush-denormal has no effect.')
    if args.batch_size is None:
        args.batch_size = 16 if device.type == 'cuda' else 4
    if args.amp == 'fp16' and device.type == 'cpu':
        raise SystemExit('--amp fp16 is for CUDA; use --amp bf16 on CPU.')
    variants = select_variants(args)
    if not variants:
        raise SystemExit('No registered variant matches --methods/--variants.')
    meta = run_metadata(device)
    print(f"timm-fgvc throughput on {meta['device']} (torch {meta['torch']}): "
          f"{', '.join(f'{n}@{s}' for n, s in variants)}", flush=True)
    entries = []
    for name, size in variants:
        entry = bench_variant(name, size, args, device)
        entry.update(meta)
        entries.append(entry)
    out = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / f'throughput_{device.type}_quick.json' if args.quick
        else RESULTS_DIR / f'throughput_{device.type}.json')
    merge_results(out, entries, ('variant', 'img_size', 'batch_size', 'amp', 'channels_last', 'compile',
                                 'flush_denormal', 'device_type'))
    print('\n| variant | px | batch | infer img/s (method / bound) | overhead | train img/s (method / bound) '
          '| overhead | export |')
    print('|---|---|---|---|---|---|---|---|')
    for e in entries:
        i, t = e['inference'], e['training']
        export = e.get('torch_export', {})
        print(f"| {e['variant']} | {e['img_size']} | {e['batch_size']} | {i['method']['images_per_s']:.2f} / "
              f"{i['bound']['images_per_s']:.2f} | {i['overhead']:.3f} | {t['method']['images_per_s']:.2f} / "
              f"{t['bound']['images_per_s']:.2f} | {t['overhead']:.3f} | "
              f"{'ok' if export.get('ok') else export.get('error', 'skipped')} |")
    print(f'\nwrote {out}')
    return entries


if __name__ == '__main__':
    main()
