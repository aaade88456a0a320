r"""Training command line for the paper's models.

N-body (charged particles, see :mod:`pyg_implicit.datasets.nbody`)::

    python -m pyg_implicit.datasets.nbody generate --out data/nbody_charged
    python -m pyg_implicit.train nbody --data data/nbody_charged [--group o3|so3|so2z|o2z|octa|fullocta] \
        [--epochs N] [--device cpu|cuda] [--seed S]

Per epoch: a progress bar over the training batches, then the validation MSE.
Every run writes into its own folder (``--out DIR``; default a new
``runs/<run-name>-<UTC time>-<pid>``): ``train.log``, the best model
(``best.pt``, lowest validation MSE), the last training state (``last.pt``) and,
at the end, ``result.json`` with the test MSE of the best model, the command,
the resolved configuration, the data fingerprint and the code version. A run
starts fresh unless asked to continue: ``--resume auto`` (with ``--out``) or
``--resume PATH`` (a run folder or checkpoint) continues it, and stops with an
error naming what differs when the data, the configuration (``--epochs`` and
``--time-limit`` may grow) or the experiment are not the checkpoint's
(``--allow-change KEY`` accepts a deliberate change and records it). Recording
the result under ``benchmarks/results/`` is explicit: ``--record`` (or
``--record PATH``), which refuses to replace a recorded file without
``--overwrite-record``. Checkpoints and results are written atomically.

Multi-GPU: launch with ``torchrun --nproc_per_node K -m pyg_implicit.train nbody ...``;
the script then uses ``torch.distributed`` (NCCL on GPUs, gloo on CPU), a
``DistributedSampler`` and ``DistributedDataParallel``; ``--batch-size`` is per
process. Only rank 0 prints, saves and writes results.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import shlex
import sys
import time
import warnings
from typing import Dict, Optional

import numpy as np
import torch

from pyg_implicit import runs
from pyg_implicit.models.nbody import AXIAL_GROUPS, GROUPS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- utilities

def _dist_info():
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return ws > 1, int(os.environ.get("RANK", "0")), ws, int(os.environ.get("LOCAL_RANK", "0"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tee(file):
    """A ``log`` that prints and appends to ``file``."""
    def log(*parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        file.write(line + "\n")
        file.flush()
    return log


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


# --------------------------------------------------------------------------- N-body

def nbody_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("nbody", help="charged N-body position prediction",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="directory with {train,val,test}.npz")
    p.add_argument("--group", default="o3", choices=GROUPS)
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--time-limit", type=float, default=53.0,
                   help="training budget in minutes (0: none). The learning-rate schedule "
                        "anneals over the epochs or this budget, whichever ends first; no "
                        "epoch starts after it, then the best model is tested")
    p.add_argument("--batch-size", type=int, default=10, help="graphs per batch (per process)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default: 0.05 with adamw, 1e-8 with adam")
    p.add_argument("--optimizer", default="adamw", choices=("adam", "adamw"),
                   help="adam: weight decay as an L2 term; adamw: decoupled weight decay")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--max-train", type=int, default=3000,
                   help="training simulations used (EGNN: 3000)")
    p.add_argument("--max-eval", type=int, default=None,
                   help="limit validation/test simulations (default: all)")
    p.add_argument("--frame-0", type=int, default=30)
    p.add_argument("--frame-T", type=int, default=40)
    p.add_argument("--train-windows", type=int, default=1,
                   help="input/target windows per training simulation: frames "
                        "(frame_0 - k, frame_T - k) for k < K. The EGNN protocol uses 1; "
                        "more windows use more of each training trajectory (a different "
                        "protocol, not comparable with the published numbers)")
    p.add_argument("--time-reversal", action=argparse.BooleanOptionalAction, default=True,
                   help="also train on each training window run backwards (input frame_T with "
                        "the reversed velocity, target frame_0): an exact symmetry of the "
                        "simulator that doubles the training samples without new simulations")
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--scalars", type=int, default=16)
    p.add_argument("--vectors", type=int, default=8)
    p.add_argument("--tensors", type=int, default=0)
    p.add_argument("--hidden-channels", type=int, default=16, help="kernel MLP channels")
    p.add_argument("--hidden-layers", type=int, default=2, help="kernel MLP hidden layers")
    p.add_argument("--band-limit", type=int, default=2, help="kernel MLP band limit")
    p.add_argument("--width", type=float, default=2.0, help="initial envelope width")
    p.add_argument("--no-pos-updates", action="store_true",
                   help="keep the input positions in every layer (no EGNN-style updates)")
    p.add_argument("--node-charge", default="auto", choices=("auto", "on", "off"),
                   help="give the charge q_i to the first layer as a node feature. off: "
                        "the model sees only q_i q_j (edges) and is exactly invariant under "
                        "flipping all charges, a symmetry of `charged`; auto: off for "
                        "`charged`, on for `charged-field` (the field force q_i E breaks "
                        "that symmetry)")
    p.add_argument("--no-relative-velocity", action="store_true",
                   help="absolute velocities (by default they are taken relative to the "
                        "centre-of-mass velocity: a Galilean-boost covariant model)")
    p.add_argument("--huber-delta", type=float, default=0.3,
                   help="train on a Huber loss of each particle's error norm with this "
                        "threshold (0: the MSE): rare close encounters, whose targets are "
                        "chaotic, then weigh linearly, not quadratically; the logged "
                        "training error stays the MSE")
    p.add_argument("--input-noise", type=float, default=0.0,
                   help="in training, add Gaussian noise of this std to the input positions "
                        "and velocities and move the targets as free flight would "
                        "(dp + horizon * dv)")
    p.add_argument("--ema", type=float, default=0.999,
                   help="decay of an exponential moving average of the weights, updated "
                        "each step, which is validated, checkpointed and tested "
                        "(0: off)")
    p.add_argument("--validate-raw", action="store_true",
                   help="with --ema, also validate the raw weights each epoch (logged)")
    p.add_argument("--no-velocity-attr", action="store_true",
                   help="do not pass velocities to the kernels as edge attributes")
    p.add_argument("--backend", default="auto", help="ImplicitPointConv backend")
    p.add_argument("--grid", default="auto",
                   help="grid of the kernel MLP's Fourier nonlinearity: auto ('ico' for "
                        "o3/so3, the layer's default otherwise), or a grid name, or 'default'")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:K")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default on CPU: 1; a batch of 25 five-particle "
                        "graphs is too small to split, 2 threads ran 1.3x slower per epoch "
                        "than 1 on the 2-core reference machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-name", default=None,
                   help="name of the run folder and of the recorded result (default "
                        "nbody_<variant>_<group>)")
    p.add_argument("--out", default=None,
                   help="the run's folder (missing or empty for a new run; default "
                        f"{runs.RUNS_DIR}/<run-name>-<UTC time>-<pid>)")
    p.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue a run: 'auto' = --out's last checkpoint, or a run "
                        "folder / checkpoint file (default: start fresh)")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: accept a changed option (e.g. lr) or 'data' "
                        "(recorded in the run's history); repeatable or comma-separated")
    p.add_argument("--record", nargs="?", const="auto", default=None, metavar="PATH",
                   help="also write the result to PATH (default with no value: "
                        "benchmarks/results/<run-name>.json)")
    p.add_argument("--overwrite-record", action="store_true",
                   help="let --record replace an existing file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=train_nbody)
    return p


def _node_charge(choice: str, variant: str) -> bool:
    """The charge-flip symmetry (q -> -q for all particles) holds without an external
    field only; "auto" drops q_i from the node features exactly when it holds."""
    return choice == "on" or (choice == "auto" and variant != "charged")


def _model_config(args, variant: str) -> Dict:
    return dict(group=args.group, num_layers=args.num_layers, scalars=args.scalars,
                vectors=args.vectors, tensors=args.tensors,
                hidden_channels=args.hidden_channels, hidden_layers=args.hidden_layers,
                band_limit=args.band_limit, velocity_attr=not args.no_velocity_attr,
                width=args.width, pos_updates=not args.no_pos_updates,
                node_charge=_node_charge(args.node_charge, variant),
                relative_velocity=not args.no_relative_velocity, conv_kwargs=_conv_kwargs(args))


def _conv_kwargs(args) -> Dict:
    kw = {"backend": args.backend}
    grid = args.grid
    if grid == "auto":
        grid = "ico" if args.group in ("o3", "so3") else None
    if grid not in (None, "default"):
        kw["grid"] = grid
    return kw


def build_nbody_model(config: Dict):
    from pyg_implicit.models.nbody import NBodyModel

    return NBodyModel(**config)


# NBodyModel options removed when it was rebuilt on the pyg_implicit.nn blocks: a
# checkpoint that records them (or none of the options added before them) predates the
# rebuild, and its weights do not fit the current modules
_REMOVED_MODEL_OPTIONS = ("messages", "coulomb_attr", "node_force", "dropout",
                          "encounter_attr", "horizon", "pair_velocity_attr", "axis_attr",
                          "axis_range")


def _check_model_config(model_config: Dict, path: str) -> None:
    old = [k for k in _REMOVED_MODEL_OPTIONS if k in model_config]
    if old or "relative_velocity" not in model_config:
        raise SystemExit(f"{path} was written by NBodyModel before its rebuild on the "
                         f"pyg_implicit.nn blocks (its configuration has "
                         f"{', '.join(old) or 'none of the newer options'}); this version "
                         f"cannot load its weights: check out the commit that wrote it")


def load_model_state(model: torch.nn.Module, state: Dict) -> None:
    """``model.load_state_dict(state)`` for a state saved in either mode: escnn's
    ``Linear`` keeps its expanded weights as buffers only in eval mode, so a state saved
    in training mode lacks keys that an eval-mode model has, and vice versa."""
    was_training = model.training
    model.train()
    if set(state) != set(model.state_dict()):
        model.eval()
    model.load_state_dict(state)
    model.train(was_training)  # eval() rebuilds the caches from the loaded weights


def load_nbody_checkpoint(path: str, map_location="cpu"):
    """Rebuild an :class:`NBodyModel` from a checkpoint written by this script."""
    ck = torch.load(path, map_location=map_location, weights_only=False)
    _check_model_config(ck["model_config"], path)
    model = build_nbody_model(ck["model_config"])
    load_model_state(model, ck["model"])
    return model, ck


# options that do not define the run: a resumed run may change them (--epochs and
# --time-limit may grow: the schedule is stretched; the data may move if its
# fingerprint stays the same)
_VOLATILE_ARGS = ("func", "argv", "epochs", "time_limit", "out", "resume", "allow_change",
                  "record", "overwrite_record", "no_progress", "device", "threads", "data",
                  "run_name")


def run_config(args) -> Dict:
    """The resolved options that define a run (all but ``_VOLATILE_ARGS``)."""
    return {k: v for k, v in vars(args).items() if k not in _VOLATILE_ARGS}


def load_train_windows(root: str, frame_0: int, frame_T: int, windows: int,
                       max_train: Optional[int], time_reversal: bool = False) -> Dict:
    """The training split with ``windows`` input/target pairs per simulation, shifted
    back one frame each: (frame_0 - k, frame_T - k) for k < windows, concatenated; with
    ``time_reversal`` followed by the same windows run backwards (frame_T - k -> frame_0 - k)."""
    from pyg_implicit.datasets.nbody import load_split

    parts = [load_split(root, "train", frame_0 - k, frame_T - k, max_train, time_reversed=rev)
             for rev in ((False, True) if time_reversal else (False,)) for k in range(windows)]
    train = parts[0]
    for key in ("pos", "vel", "target", "charges"):
        train[key] = torch.cat([part[key] for part in parts])
    return train


def perturb_inputs(batch: Dict, sigma: float, horizon: float) -> Dict:
    """Gaussian noise ``dp``, ``dv`` (std ``sigma``) on the input positions and velocities,
    with the targets moved by ``dp + horizon * dv``: exact for free flight, so the noise
    only blurs the interaction part of the map the model learns (a regulariser)."""
    dp = sigma * torch.randn_like(batch["pos"])
    dv = sigma * torch.randn_like(batch["vel"])
    return {**batch, "pos": batch["pos"] + dp, "vel": batch["vel"] + dv,
            "target": batch["target"] + dp + horizon * dv}


def position_loss(pred: torch.Tensor, target: torch.Tensor, huber_delta: float = 0.0):
    """Training loss on predicted positions [N, 3]: the MSE, or with ``huber_delta > 0``
    a Huber loss on each particle's error norm ``e`` (``e^2`` up to ``delta``, then
    ``2 delta e - delta^2``; divided by 3, so it equals the MSE while every error is
    small). Rotation-invariant either way; the Huber loss caps the pull of the close
    encounters whose targets no rotation-equivariant model can fit (the clipping)."""
    if not huber_delta:
        return torch.nn.functional.mse_loss(pred, target)
    e2 = (pred - target).pow(2).sum(-1)
    e = e2.clamp_min(1e-30).sqrt()
    d = float(huber_delta)
    return torch.where(e <= d, e2, 2 * d * e - d * d).mean() / 3


# what a run did before these options existed (a checkpoint's configuration lacks
# the keys of options added after it was written); add an entry with every new option
_LEGACY_ARGS = {"input_noise": 0.0, "huber_delta": 0.0, "train_windows": 1,
                "time_reversal": False}


def _check_resumable(ck: Dict, path: str, experiment: str, config: Dict, model_config: Dict,
                     data: Dict, allowed: set) -> Dict:
    """Refuse to continue a checkpoint of another experiment, configuration or dataset
    (unless the difference is in ``allowed``); return the accepted differences."""
    meta = ck.get("meta")
    if meta is None:
        raise SystemExit(f"--resume: {path} predates run metadata (no record of its data "
                         f"and configuration); start a new run")
    if meta.get("experiment") != experiment:
        raise SystemExit(f"--resume: {path} belongs to experiment "
                         f"{meta.get('experiment')!r}, not {experiment!r}")
    _check_model_config(ck["model_config"], path)
    diff = runs.differences(meta["config"], config, _LEGACY_ARGS)
    if not diff:  # the same options built another model: the code changed
        diff = {f"model_config.{k}": v for k, v in runs.differences(
            ck["model_config"], model_config).items()}
    data_diff = runs.differences(meta["data"], data)
    if data_diff:
        diff["data"] = (f"{len(meta['data'])} files", f"{len(data)} files, "
                        f"{len(data_diff)} differing ({', '.join(sorted(data_diff)[:3])})")
    refused = {k: v for k, v in diff.items() if k.split(".")[-1] not in allowed}
    if refused:
        raise SystemExit(f"--resume: {path} was written by another run: "
                         f"{runs.describe(refused)}. Start a new run, or pass "
                         f"--allow-change {','.join(k.split('.')[-1] for k in refused)} "
                         f"to continue it anyway")
    return {k: list(v) for k, v in diff.items()}


class WeightEMA:
    """Exponential moving average of a model's parameters, in a copy of the model.

    The decay warms up as ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates, so
    that the random initial weights are forgotten within the first epochs (with a fixed
    0.999 they would still weigh 0.999^t, e.g. 3% after 3600 steps).

    Only parameters are averaged: the buffers of the convolutions are kernel bases
    and caches that each copy keeps for itself (``torch.optim.swa_utils.AveragedModel``
    copies buffers into the average, which fails on caches that change shape)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.decay, self.num_updates = decay, 0
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        avg = list(self.module.parameters())
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(avg, [p.detach() for p in model.parameters()], weight)
        self.num_updates += 1

    def state_dict(self) -> Dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "model": self.module.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        load_model_state(self.module, state["model"])
        self.num_updates = state["num_updates"]


class _Batches:
    """Dense batches of equally sized fully connected graphs."""

    def __init__(self, tensors: Dict[str, torch.Tensor]):
        self.t = tensors
        self.n = tensors["charges"].shape[1]
        self._edges = {}

    def __len__(self):
        return self.t["charges"].shape[0]

    def edges(self, B: int, device):
        from pyg_implicit.models.nbody import fully_connected_edges

        key = (B, str(device))
        if key not in self._edges:
            self._edges[key] = fully_connected_edges(B, self.n, self_loops=True, device=device)
        return self._edges[key]

    def get(self, idx: torch.Tensor, device, dtype):
        B = idx.numel()
        out = {k: self.t[k][idx].reshape(B * self.n, -1).to(device=device, dtype=dtype)
               for k in ("pos", "vel", "charges", "target")}
        out["edge_index"] = self.edges(B, device)
        return out


def _index_loader(num: int, batch_size: int, shuffle: bool, distributed: bool, seed: int):
    from torch.utils.data import DataLoader, DistributedSampler

    ds = torch.utils.data.TensorDataset(torch.arange(num))
    sampler = DistributedSampler(ds, shuffle=shuffle, seed=seed, drop_last=False) \
        if distributed else None
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=(shuffle and sampler is None),
                        sampler=sampler, generator=gen if sampler is None else None,
                        collate_fn=lambda b: torch.stack([x[0] for x in b]))
    return loader, sampler


@torch.no_grad()
def evaluate(model, batches: _Batches, device, batch_size: int, distributed: bool,
             dtype=torch.float32) -> float:
    """Mean squared error over particles and coordinates (EGNN's metric)."""
    model.eval()
    loader, _ = _index_loader(len(batches), batch_size, False, distributed, 0)
    sq = torch.zeros((), dtype=torch.float64, device=device)
    cnt = torch.zeros((), dtype=torch.float64, device=device)
    for idx in loader:
        b = batches.get(idx, device, dtype)
        pred = model(b["pos"], b["vel"], b["charges"], b["edge_index"])
        sq += ((pred - b["target"]) ** 2).sum().double()
        cnt += b["target"].numel()
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(sq)
        dist.all_reduce(cnt)
    # DistributedSampler pads by repeating samples; the bias is negligible but we
    # report the exact MSE on rank 0 for the test split (see train_nbody).
    return float(sq / cnt.clamp_min(1))


def _time_reversal_warning(variant: str, group: str, time_reversal: bool) -> Optional[str]:
    """Time reversal is exact for charged-field too, but a model whose group does not fix
    the field axis infers the field's direction from the velocities, a cue that reversed
    samples turn around (RESULTS_LOG.md: O(3) validation 0.0159 against 0.0054 after 9 epochs)."""
    if variant == "charged-field" and time_reversal and group not in AXIAL_GROUPS:
        return (f"--group {group} does not fix the field axis z of charged-field: with "
                f"--time-reversal such a model trains much worse (it reads the field's "
                f"direction off the velocities, which half of the samples reverse); "
                f"pass --no-time-reversal or a group in {AXIAL_GROUPS}")
    return None


def train_nbody(args) -> Dict:
    from tqdm.auto import tqdm

    from pyg_implicit.datasets.nbody import load_split

    if args.weight_decay is None:
        args.weight_decay = 0.05 if args.optimizer == "adamw" else 1e-8
    distributed, rank, world, local_rank = _dist_info()
    if args.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if distributed and device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    main = rank == 0
    log = (lambda *a: print(*a, flush=True)) if main else (lambda *a: None)
    t_start = time.time()
    code = runs.code_version(REPO_ROOT)  # at launch: the code that trained
    seed_everything(args.seed)

    if not 1 <= args.train_windows <= args.frame_0 + 1:
        raise SystemExit(f"--train-windows must lie in [1, frame_0 + 1 = {args.frame_0 + 1}] "
                         f"(windows start at frames frame_0 - k >= 0), got {args.train_windows}")
    train = load_train_windows(args.data, args.frame_0, args.frame_T, args.train_windows,
                               args.max_train, args.time_reversal)
    val = load_split(args.data, "val", args.frame_0, args.frame_T, args.max_eval)
    test = load_split(args.data, "test", args.frame_0, args.frame_T, args.max_eval)
    variant, horizon = train.pop("variant"), train.pop("horizon")
    for split in (val, test):
        split.pop("variant"), split.pop("horizon")
    warning = _time_reversal_warning(variant, args.group, args.time_reversal)
    if warning:
        warnings.warn(warning, stacklevel=1)
    train_b, val_b, test_b = _Batches(train), _Batches(val), _Batches(test)

    run_name = args.run_name or f"nbody_{variant.replace('-', '_')}_{args.group}"
    record_path = None
    if args.record:
        record_path = args.record if args.record != "auto" else os.path.join(
            REPO_ROOT, "benchmarks", "results", f"{run_name}.json")
        if main:
            runs.check_record_target(record_path, args.overwrite_record)
    resume_path = runs.resume_checkpoint(args.resume, args.out) if args.resume else None
    if resume_path is not None:
        run_dir = os.path.dirname(resume_path)
    elif main:
        run_dir = runs.new_run_dir(args.out, run_name)
    else:
        run_dir = None
    best_path, last_path = (None, None) if run_dir is None else (
        os.path.join(run_dir, runs.BEST), os.path.join(run_dir, runs.LAST))
    if main:
        log_file = open(os.path.join(run_dir, "train.log"), "a")
        log = _tee(log_file)
    meta = {"experiment": "nbody", "config": run_config(args),
            "data": runs.data_fingerprint(args.data), "code": code, "seed": args.seed}

    config = _model_config(args, variant)
    model = build_nbody_model(config).to(device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[args.optimizer]
    opt = opt_cls(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_b) / (args.batch_size * world))
    total_steps = max(1, args.epochs * steps_per_epoch)
    warm = max(0, args.warmup_epochs * steps_per_epoch)

    # time-based progress, fixed per epoch (identical on every rank): the fraction of
    # the budget used when the epoch starts, plus the last epoch's share spread
    # linearly over the epoch's steps
    clock = {"frac": 0.0, "dfrac": 0.0, "step0": 0}

    def lr_lambda(step):
        """Linear warm-up, then cosine decay to 1% of the peak, over the epochs or, with
        --time-limit, over the training time if that runs out first."""
        if step < warm:
            return (step + 1) / warm
        prog = (step - warm) / max(1, total_steps - warm)
        if args.time_limit:
            within = min(1.0, (step - clock["step0"]) / steps_per_epoch)
            prog = max(prog, clock["frac"] + within * clock["dfrac"])
        prog = min(1.0, prog)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * prog))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    if args.huber_delta < 0:
        raise SystemExit(f"--huber-delta must be >= 0 (0: the MSE), got {args.huber_delta}")
    ema = None
    if args.ema:
        if not 0.0 < args.ema < 1.0:
            raise SystemExit(f"--ema must be a decay in (0, 1), got {args.ema}")
        ema = WeightEMA(model, args.ema)
    # the model that is validated, checkpointed as best and tested
    eval_model = ema.module if ema is not None else model
    start_epoch, best_val, history, train_time, resumes = 0, float("inf"), [], 0.0, []
    if resume_path is not None:
        ck = torch.load(resume_path, map_location=device, weights_only=False)
        accepted = _check_resumable(ck, resume_path, "nbody", meta["config"], config,
                                    meta["data"], runs.allowed_changes(args.allow_change))
        load_model_state(model, ck["raw_model"] if "raw_model" in ck else ck["model"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, best_val = ck["epoch"] + 1, ck["best_val"]
        history, train_time = ck.get("history", []), ck.get("train_time_s", 0.0)
        resumes = ck.get("resumes", []) + [{
            "epoch": start_epoch, "checkpoint": resume_path, "changed": accepted,
            "code": code, "previous_code": ck["meta"]["code"]}]
        torch.set_rng_state(ck["rng_cpu"])
        np.random.set_state(ck["rng_numpy"])
        random.setstate(ck["rng_python"])
        if accepted:
            log(f"accepted changes: {runs.describe({k: tuple(v) for k, v in accepted.items()})}")
        if code != ck["meta"]["code"]:
            log(f"note: the code changed since the checkpoint ({ck['meta']['code']} -> {code})")
        log(f"resumed from {resume_path} at epoch {start_epoch} (best val {best_val:.6f})")

    ddp_model = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    log(f"nbody/{variant}: group={args.group} params={n_params} train={len(train_b)} "
        f"val={len(val_b)} test={len(test_b)} device={device} world={world} "
        f"threads={torch.get_num_threads()} run folder {run_dir}")
    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, args.epochs):
        budget = 60.0 * args.time_limit if args.time_limit else float("inf")
        last = history[-1]["time_s"] if history else 0.0
        tinfo = torch.tensor([train_time / budget, last / budget], dtype=torch.float64)
        if distributed:  # rank 0 decides, so that all ranks agree
            import torch.distributed as dist

            tinfo = tinfo.to(device)
            dist.broadcast(tinfo, src=0)
            tinfo = tinfo.cpu()
        if float(tinfo[0]) >= 1.0:
            stopped_early = True
            log(f"time limit of {args.time_limit} min reached after {epoch} epochs")
            break
        clock.update(frac=float(tinfo[0]), dfrac=float(tinfo[1]), step0=sched.last_epoch)
        t0 = time.time()
        ddp_model.train()
        loader, sampler = _index_loader(len(train_b), args.batch_size, True, distributed,
                                        args.seed + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        tot, cnt = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                   disable=(not main) or args.no_progress, file=sys.stderr)
        for idx in bar:
            b = train_b.get(idx, device, torch.float32)
            if args.input_noise:
                b = perturb_inputs(b, args.input_noise, horizon)
            pred = ddp_model(b["pos"], b["vel"], b["charges"], b["edge_index"])
            loss = position_loss(pred, b["target"], args.huber_delta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            mse = loss if not args.huber_delta else \
                torch.nn.functional.mse_loss(pred.detach(), b["target"])
            tot += mse.item() * idx.numel()
            cnt += idx.numel()
            bar.set_postfix(loss=f"{tot / cnt:.5f}")
        bar.close()
        if distributed:
            import torch.distributed as dist

            tc = torch.tensor([tot, float(cnt)], dtype=torch.float64, device=device)
            dist.all_reduce(tc)
            tot, cnt = float(tc[0]), int(tc[1])
        eval_bs = max(args.batch_size, 200)
        val_mse = evaluate(eval_model, val_b, device, eval_bs, distributed)
        raw = {}
        if ema is not None and args.validate_raw:
            raw["val_mse_raw"] = evaluate(model, val_b, device, eval_bs, distributed)
        train_time += time.time() - t0
        improved = val_mse < best_val
        history.append({"epoch": epoch + 1, "train_mse": tot / max(cnt, 1), "val_mse": val_mse,
                        **raw, "lr": opt.param_groups[0]["lr"], "time_s": time.time() - t0})
        log(f"epoch {epoch + 1:4d}  train {tot / max(cnt, 1):.6f}  val {val_mse:.6f}"
            + "".join(f"  (raw weights: val {v:.6f})" for v in raw.values())
            + f"{'  *' if improved else ''}  ({time.time() - t0:.1f}s)")
        if main:
            state = {"model": eval_model.state_dict(), "model_config": config, "epoch": epoch,
                     "val_mse": val_mse, "variant": variant, "meta": meta}
            if improved:
                best_val = val_mse
                runs.atomic_torch_save(state, best_path)
            if ema is not None:
                state.update(raw_model=model.state_dict(), ema=ema.state_dict())
            state.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                         best_val=best_val, history=history, train_time_s=train_time,
                         resumes=resumes, rng_cpu=torch.get_rng_state(),
                         rng_numpy=np.random.get_state(), rng_python=random.getstate())
            runs.atomic_torch_save(state, last_path)
        else:
            best_val = min(best_val, val_mse)
    if distributed:
        import torch.distributed as dist

        dist.barrier()

    result = None
    if main:
        if os.path.exists(best_path):
            best_model, ck = load_nbody_checkpoint(best_path, map_location=device)
            best_model.to(device)
            best_epoch = ck["epoch"] + 1
        else:
            best_model, best_epoch = eval_model, None
        test_mse = evaluate(best_model, test_b, device, max(args.batch_size, 200), False)
        wall = time.time() - t_start
        argv = getattr(args, "argv", None) or sys.argv[1:]
        launcher = f"torchrun --nproc_per_node {world} -m" if distributed else "python -m"
        cmd = f"{launcher} pyg_implicit.train " + " ".join(shlex.quote(a) for a in argv)
        result = {
            "task": "nbody", "variant": variant, "group": args.group, "test_mse": test_mse,
            "best_val_mse": best_val, "best_epoch": best_epoch,
            "epochs_completed": len(history), "epochs_requested": args.epochs,
            "stopped_by_time_limit": stopped_early, "wall_time_s": wall,
            "train_time_s": train_time, "command": cmd, "params": n_params,
            "model_config": config, "train_samples": len(train_b), "val_samples": len(val_b),
            "test_samples": len(test_b), "batch_size": args.batch_size, "lr": args.lr,
            "optimizer": args.optimizer, "weight_decay": args.weight_decay, "ema": args.ema,
            "input_noise": args.input_noise, "huber_delta": args.huber_delta,
            "train_windows": args.train_windows, "time_reversal": args.time_reversal,
            "seed": args.seed, "device": str(device), "world_size": world,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "git_commit": code["commit"], "code": code, "run_dir": os.path.abspath(run_dir),
            "config": meta["config"], "data": os.path.abspath(args.data),
            "data_fingerprint": meta["data"], "resumes": resumes, "history": history,
        }
        result_path = os.path.join(run_dir, runs.RESULT)
        runs.atomic_write_json(result, result_path)
        written = [result_path]
        if record_path is not None:
            runs.check_record_target(record_path, args.overwrite_record)
            runs.atomic_write_json(result, record_path)
            written.append(record_path)
        log(f"test MSE {test_mse:.6f} (best val {best_val:.6f}, epoch {best_epoch}); "
            f"wall time {wall:.1f}s; written to {' and '.join(written)}")
        log_file.close()
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyg_implicit.train",
                                description="Train pyg_implicit models.")
    sub = p.add_subparsers(dest="task", required=True)
    nbody_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
