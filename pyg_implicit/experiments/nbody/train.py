"""Charged N-body position prediction (EGNN's task).

Data from :mod:`.data`, model :class:`.model.NBodyModel`::

    python -m pyg_implicit.experiments.nbody.data generate --out data/nbody_charged
    python -m pyg_implicit.train nbody --data data/nbody_charged [--group o3|so3|so2z|o2z|octa|fullocta]

Validated each epoch on the validation MSE (EGNN's metric: mean over particles and
coordinates); the weights with the lowest one are tested.
"""
from __future__ import annotations

import argparse
import warnings
from typing import Dict, Optional

import lightning.pytorch as pl
import torch
from torchmetrics import MeanSquaredError

from pyg_implicit.experiments import engine
from pyg_implicit.experiments.nbody.model import AXIAL_GROUPS, GROUPS

NAME = "nbody"


def add_options(p) -> None:
    p.set_defaults(epochs=120, time_limit=53.0, batch_size=10)
    a = p.add_argument
    a("--data", required=True, help="directory with {train,val,test}.npz")
    a("--group", default="o3", choices=GROUPS)
    a("--max-train", type=int, default=3000, help="training simulations used (EGNN: 3000)")
    a("--max-eval", type=int, default=None, help="limit validation/test simulations")
    a("--frame-0", type=int, default=30)
    a("--frame-T", type=int, default=40)
    a("--train-windows", type=int, default=1,
      help="input/target windows per training simulation, (frame_0 - k, frame_T - k) for "
           "k < K. EGNN's protocol uses 1; more use more of each trajectory (off-protocol)")
    a("--time-reversal", action=argparse.BooleanOptionalAction, default=False,
      help="also train on each window run backwards, an exact symmetry of the simulator; "
           "an extension: it builds the reversed sample from the target frame's velocity, "
           "which the protocol's training pairs (x_30, v_30, q) -> x_40 do not contain")
    a("--num-layers", type=int, default=4)
    a("--scalars", type=int, default=16)
    a("--vectors", type=int, default=8)
    a("--tensors", type=int, default=0)
    a("--hidden-channels", type=int, default=16, help="kernel MLP channels")
    a("--hidden-layers", type=int, default=2, help="kernel MLP hidden layers")
    a("--band-limit", type=int, default=2, help="kernel MLP band limit")
    a("--width", type=float, default=2.0, help="initial envelope width")
    a("--no-pos-updates", action="store_true", help="no EGNN-style position updates")
    a("--node-charge", default="auto", choices=("auto", "on", "off"),
      help="give q_i to the first layer. off: only q_i q_j, exactly invariant under "
           "flipping all charges (a symmetry of `charged`); auto: off for `charged`")
    a("--no-relative-velocity", action="store_true",
      help="absolute velocities (default: relative to the centre of mass, boost covariant)")
    a("--no-velocity-attr", action="store_true", help="no velocities in the edge attributes")
    a("--huber-delta", type=float, default=0.3,
      help="train on a Huber loss of each particle's error norm (0: the MSE)")
    a("--input-noise", type=float, default=0.0,
      help="std of Gaussian noise on the training inputs, targets moved as free flight")
    a("--backend", default="auto", help="ImplicitPointConv backend")
    a("--nonlinearity", default="auto", choices=("auto", "gated", "norm"),
      help="nonlinearity of the kernel MLPs: auto (Fourier on a grid for continuous groups, "
           "exact only on the grid's symmetries) or gated/norm (exactly equivariant)")
    a("--grid", default="auto", help="grid of the kernel MLP's Fourier nonlinearity: auto "
      "('ico' for o3/so3, the layer's default otherwise), a grid name, or 'default'")


def model_config(args, variant: str) -> Dict:
    grid = args.grid if args.grid != "auto" else ("ico" if args.group in ("o3", "so3") else None)
    conv = {"backend": args.backend, **({"grid": grid} if grid not in (None, "default") else {})}
    if getattr(args, "nonlinearity", "auto") != "auto":  # older recorded configs lack it
        conv = {"backend": args.backend, "nonlinearity": args.nonlinearity}
    node_charge = args.node_charge == "on" or (args.node_charge == "auto" and variant != "charged")
    return dict(group=args.group, num_layers=args.num_layers, scalars=args.scalars,
                vectors=args.vectors, tensors=args.tensors,
                hidden_channels=args.hidden_channels, hidden_layers=args.hidden_layers,
                band_limit=args.band_limit, velocity_attr=not args.no_velocity_attr,
                width=args.width, pos_updates=not args.no_pos_updates, node_charge=node_charge,
                relative_velocity=not args.no_relative_velocity, conv_kwargs=conv)


def load_train_windows(root: str, frame_0: int, frame_T: int, windows: int,
                       max_train: Optional[int], time_reversal: bool = False) -> Dict:
    """The training split with ``windows`` input/target pairs per simulation, shifted
    back one frame each: (frame_0 - k, frame_T - k) for k < windows; with
    ``time_reversal`` followed by the same windows run backwards."""
    from pyg_implicit.experiments.nbody.data import load_split

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
    """The MSE, or with ``huber_delta > 0`` a Huber loss on each particle's error norm
    ``e`` (``e^2`` up to ``delta``, then ``2 delta e - delta^2``; divided by 3, so it
    equals the MSE while every error is small). Rotation-invariant either way; it caps
    the pull of the close encounters whose clipped targets no O(3) model can fit."""
    if not huber_delta:
        return torch.nn.functional.mse_loss(pred, target)
    e2 = (pred - target).pow(2).sum(-1)
    e = e2.clamp_min(1e-30).sqrt()
    d = float(huber_delta)
    return torch.where(e <= d, e2, 2 * d * e - d * d).mean() / 3


def time_reversal_warning(variant: str, group: str, time_reversal: bool) -> Optional[str]:
    """Time reversal is exact for charged-field too, but a model whose group does not fix
    the field axis infers the field's direction from the velocities, a cue that the
    reversed samples turn around (it then trains much worse)."""
    if variant == "charged-field" and time_reversal and group not in AXIAL_GROUPS:
        return (f"--group {group} does not fix the field axis z of charged-field: with "
                f"--time-reversal such a model trains much worse (it reads the field's "
                f"direction off the velocities, which half of the samples reverse); "
                f"pass --no-time-reversal or a group in {AXIAL_GROUPS}")
    return None


class Systems:
    """Equally sized systems as dense tensors; ``collate`` turns a list of indices into
    one batch of fully connected graphs (with self loops)."""

    def __init__(self, tensors: Dict[str, torch.Tensor]):
        self.t, self.n = tensors, tensors["charges"].shape[1]
        self._edges = {}

    def __len__(self):
        return self.t["charges"].shape[0]

    def __getitem__(self, i):
        return i

    def collate(self, indices) -> Dict[str, torch.Tensor]:
        from pyg_implicit.experiments.nbody.model import fully_connected_edges

        idx, B = torch.as_tensor(indices), len(indices)
        if B not in self._edges:
            self._edges[B] = fully_connected_edges(B, self.n, self_loops=True)
        return {**{k: self.t[k][idx].reshape(B * self.n, -1)
                   for k in ("pos", "vel", "charges", "target")}, "edge_index": self._edges[B]}


class NBodyData(pl.LightningDataModule):
    def __init__(self, args, train: Dict, val: Dict, test: Dict):
        super().__init__()
        self.args = args
        self.train, self.val, self.test = Systems(train), Systems(val), Systems(test)

    def train_dataloader(self):
        return engine.train_loader(self.train, self.args.batch_size, self.args.seed,
                                   self.trainer, collate_fn=self.train.collate)

    def _eval(self, systems):
        return engine.eval_loader(systems, max(self.args.batch_size, 200), self.trainer,
                                  collate_fn=systems.collate)

    def val_dataloader(self):
        return self._eval(self.val)

    def test_dataloader(self):
        return self._eval(self.test)


class NBodyTask(engine.TrainingModule):
    monitor = "val_mse"

    def __init__(self, args, variant: str, horizon: float, sizes: Dict[str, int]):
        from pyg_implicit.experiments.nbody.model import NBodyModel

        super().__init__(args)
        self.variant, self.horizon, self.sizes = variant, horizon, sizes
        self.model_config = model_config(args, variant)
        self.model = NBodyModel(**self.model_config)
        # sums over all processes' samples, in float64
        self.mse = torch.nn.ModuleDict({f"{k}_mse": MeanSquaredError().set_dtype(torch.float64)
                                        for k in ("train", "val", "test")})

    def forward(self, b):
        return self.model(b["pos"], b["vel"], b["charges"], b["edge_index"])

    def training_step(self, b, batch_idx):
        if self.args.input_noise:
            b = perturb_inputs(b, self.args.input_noise, self.horizon)
        pred = self(b)
        loss = position_loss(pred, b["target"], self.args.huber_delta)
        self.log("loss", loss, prog_bar=True, sync_dist=True)
        self.mse["train_mse"](pred.detach(), b["target"])
        self.log("train_mse", self.mse["train_mse"], on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, b, split):
        name = f"{split}_mse"
        self.mse[name](self(b), b["target"])
        self.log(name, self.mse[name], on_step=False, on_epoch=True,
                 prog_bar=split == "val")

    def validation_step(self, b, batch_idx):
        self._evaluate(b, "val")

    def test_step(self, b, batch_idx):
        self._evaluate(b, "test")

    def on_save_checkpoint(self, checkpoint: Dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["model_config"] = self.model_config

    def describe(self) -> Dict:
        return {"task": NAME, "variant": self.variant, "group": self.args.group,
                "protocol": protocol_label(self.args, self.variant),
                "model_config": self.model_config, "batch_size": self.args.batch_size,
                **{f"{k}_samples": v for k, v in self.sizes.items()}}


def protocol_label(args, variant: str) -> Dict:
    """Whether a run follows EGNN's published protocol (its systems, training pairs
    (x_30, v_30, q) -> x_40 of the first 3000 training simulations, all 2000 validation
    and test systems) and, if not, the extensions it uses."""
    from pyg_implicit.experiments.nbody.data import data_protocol

    split = data_protocol(args.data)
    extensions = [text for used, text in (
        (variant != "charged", f"variant {variant} (EGNN has no such data)"),
        (split != "egnn", f"data split {split!r}, not EGNN's systems"),
        (args.time_reversal, "time reversal (reversed samples use the target frame's "
                             "velocity)"),
        (args.train_windows > 1, f"{args.train_windows} windows per training trajectory"),
        (args.max_train != 3000, f"{args.max_train} training simulations"),
        (args.max_eval is not None, f"validation/test limited to {args.max_eval}"),
        ((args.frame_0, args.frame_T) != (30, 40), f"frames {args.frame_0} -> {args.frame_T}"),
    ) if used]
    return {"data_split": split, "on_protocol": not extensions, "extensions": extensions}


def load_model(path: str, map_location="cpu"):
    """The :class:`~.model.NBodyModel` of a checkpoint this experiment wrote (the
    weight average when the run had one)."""
    from pyg_implicit.experiments.nbody.model import NBodyModel

    ck = torch.load(path, map_location=map_location, weights_only=False)
    if "model_config" not in ck:
        raise SystemExit(f"{path} is not a checkpoint of the nbody experiment")
    model = NBodyModel(**ck["model_config"])
    model.load_state_dict({k[len("model."):]: v for k, v in ck["state_dict"].items()
                           if k.startswith("model.")})
    return model


def build(args):
    from pyg_implicit.experiments.nbody.data import load_split

    if not 1 <= args.train_windows <= args.frame_0 + 1:
        raise SystemExit(f"--train-windows must lie in [1, frame_0 + 1 = {args.frame_0 + 1}] "
                         f"(windows start at frames frame_0 - k >= 0), got {args.train_windows}")
    if args.huber_delta < 0:
        raise SystemExit(f"--huber-delta must be >= 0 (0: the MSE), got {args.huber_delta}")
    train = load_train_windows(args.data, args.frame_0, args.frame_T, args.train_windows,
                               args.max_train, args.time_reversal)
    val = load_split(args.data, "val", args.frame_0, args.frame_T, args.max_eval)
    test = load_split(args.data, "test", args.frame_0, args.frame_T, args.max_eval)
    variant, horizon = train.pop("variant"), train.pop("horizon")
    for split in (val, test):
        split.pop("variant"), split.pop("horizon")
    warning = time_reversal_warning(variant, args.group, args.time_reversal)
    if warning:
        warnings.warn(warning, stacklevel=1)
    sizes = {k: len(s["charges"]) for k, s in (("train", train), ("val", val), ("test", test))}
    task = NBodyTask(args, variant, horizon, sizes)
    return task, NBodyData(args, train, val, test), f"nbody_{variant.replace('-', '_')}_{args.group}"
