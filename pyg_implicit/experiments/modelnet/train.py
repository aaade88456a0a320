"""Point-cloud classification on ModelNet10/40 from a local copy (or the synthetic shapes).

Data from :mod:`.data`, model :class:`.model.PointCloudClassifier`::

    python -m pyg_implicit.train modelnet --data DIR/ModelNet40 --classes 40 --group so2 --kernel implicit
    python -m pyg_implicit.experiments.modelnet.data synthetic --out data/shapes_z
    python -m pyg_implicit.train modelnet --data data/shapes_z --classes auto --group o3

ModelNet has a train and a test split only: a fixed share of the training meshes
(``--val-fraction``, stratified, ``--split-seed``) is held out for validation, whose
loss selects the checkpoint; the test split is used once, on that checkpoint. Every
cloud is rotated by a random element of ``--rotate`` (training: fresh each time;
validation: one fixed draw per cloud; test: the mean of the logits over
``--test-rotations`` fixed draws).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy

from pyg_implicit.experiments import engine
from pyg_implicit.experiments.modelnet.model import GROUPS

NAME = "modelnet"
KERNELS = ("implicit", "standard")


def add_options(p) -> None:
    from pyg_implicit.experiments.modelnet.data import ROTATIONS

    p.set_defaults(epochs=100, batch_size=16, ema=0.0)
    a = p.add_argument
    a("--data", required=True, help="the ModelNet10/ModelNet40 folder (DIR/<class>/{train,test}"
      "/<class>_XXXX.off) or a synthetic one written by `...modelnet.data synthetic`")
    a("--classes", default="40", choices=("10", "40", "auto"),
      help="10/40: ModelNet's class list, all required; auto: the class folders found")
    a("--cache", default=None, help="folder of the processed meshes (default under "
      "~/.cache/pyg_implicit/modelnet)")
    a("--group", default="so2", choices=tuple(GROUPS))
    a("--kernel", default="implicit", choices=KERNELS,
      help="implicit (an equivariant MLP) or standard (escnn's analytic basis)")
    a("--num-points", type=int, default=1024, help="points sampled on each mesh")
    a("--rotate", default="z", choices=ROTATIONS,
      help="random rotations of every cloud: none, about the z axis, SO(3) or O(3)")
    a("--test-rotations", type=int, default=4, help="test logits averaged over this many")
    a("--val-fraction", type=float, default=0.1)
    a("--split-seed", type=int, default=0, help="seed of the validation split (fixed "
      "apart from --seed, so that training seeds share one split)")
    a("--channels", default="8,16,32", help="fields per level, comma separated")
    a("--ratio", type=float, default=0.25, help="farthest-point subsampling per level")
    a("--k", type=int, default=16, help="neighbours per point")
    a("--band-limit", type=int, default=1, help="of the hidden irreps")
    a("--hidden-channels", type=int, default=8, help="implicit kernel MLP channels")
    a("--hidden-layers", type=int, default=1, help="implicit kernel MLP hidden layers")
    a("--kernel-nonlinearity", default="gated", choices=("auto", "gated", "norm"),
      help="of the implicit kernel MLP (gated/norm: exactly equivariant)")
    a("--n-rings", type=int, default=3, help="radial rings of the standard basis")
    a("--label-smoothing", type=float, default=0.1)
    a("--dropout", type=float, default=0.2)
    a("--backend", default="auto", help="ImplicitPointConv backend")


def channels_of(text: str) -> List[int]:
    try:
        channels = [int(c) for c in text.split(",")]
    except ValueError:
        raise SystemExit(f"--channels must be comma-separated integers, got {text!r}") from None
    if not channels or min(channels) < 1:
        raise SystemExit(f"--channels must be positive, got {text!r}")
    return channels


def model_config(args, num_classes: int) -> Dict:
    conv = ({"hidden_channels": args.hidden_channels, "hidden_layers": args.hidden_layers,
             "kernel_nonlinearity": args.kernel_nonlinearity, "backend": args.backend}
            if args.kernel == "implicit" else {"n_rings": args.n_rings})
    return {"group": args.group, "num_classes": num_classes, "kernel": args.kernel,
            "channels": channels_of(args.channels), "num_points": args.num_points,
            "ratio": args.ratio, "k": args.k, "band_limit": args.band_limit,
            "dropout": args.dropout, "conv_kwargs": conv}


def build_model(config: Dict):
    from pyg_implicit.experiments.modelnet.model import PointCloudClassifier, make_gspace

    config = dict(config)
    return PointCloudClassifier(make_gspace(config.pop("group")), **config)


def stratified_split(labels: np.ndarray, fraction: float, seed: int):
    """(train, val) indices: ``fraction`` of each class (at least one when the class
    has two or more) held out, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * len(idx)))
        n_val = min(max(n_val, 1 if len(idx) > 1 and fraction > 0 else 0), len(idx) - 1)
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return sorted(train), sorted(val)


class Clouds(torch.utils.data.Dataset):
    """Point clouds sampled from meshes ``base[indices]``; with ``seed``, the draw of
    every cloud is fixed by its index (validation and test), else fresh each time."""

    def __init__(self, base, indices: List[int], num_points: int, seed=None):
        from pyg_implicit.experiments.modelnet.data import sample_points

        self.base, self.indices, self.seed = base, list(indices), seed
        self.sample = sample_points(num_points)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        mesh = self.base[self.indices[i]]
        if self.seed is None:
            return self.sample(mesh)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + i)
            return self.sample(mesh)


class ModelNetTask(engine.TrainingModule):
    # the loss (label-smoothed cross-entropy) ranks checkpoints more finely than the
    # error on a small validation split, where many epochs tie at 0 errors
    monitor = "val_loss"

    def __init__(self, args, config: Dict, classes: List[str], sizes: Dict[str, int],
                 dataset: Dict):
        super().__init__(args)
        self.config, self.classes, self.sizes, self.dataset = config, classes, sizes, dataset
        self.model = build_model(config)
        self.loss = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        n = len(classes)
        self.acc = torch.nn.ModuleDict({f"{s}_acc": MulticlassAccuracy(n, average="micro")
                                        for s in ("train", "val", "test")})

    def _rotated_logits(self, b, copies: int, seed=None):
        """Mean logits over ``copies`` random rotations of every cloud (drawn from a
        generator seeded by ``seed`` when given)."""
        from pyg_implicit.experiments.modelnet.data import random_rotations

        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        logits = 0.0
        for _ in range(copies):
            R = random_rotations(b.num_graphs, self.args.rotate, generator,
                                 dtype=b.pos.dtype).to(b.pos.device)[b.batch]
            pos = torch.einsum("nij,nj->ni", R, b.pos)
            normal = torch.einsum("nij,nj->ni", R, b.normal)
            logits = logits + self.model(pos, normal, b.batch, b.num_graphs)
        return logits / copies

    def training_step(self, b, batch_idx):
        logits = self._rotated_logits(b, 1)
        loss = self.loss(logits, b.y)
        self.log("loss", loss, prog_bar=True, batch_size=b.num_graphs)
        self.acc["train_acc"](logits.detach(), b.y)
        self.log("train_acc", self.acc["train_acc"], on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, b, batch_idx, split, copies):
        seed = (self.args.split_seed + 1) * 7919 + batch_idx * 104729 + (split == "test")
        logits = self._rotated_logits(b, copies, seed)
        self.log(f"{split}_loss", self.loss(logits, b.y), batch_size=b.num_graphs,
                 sync_dist=True)
        metric = self.acc[f"{split}_acc"]
        metric(logits, b.y)
        self.log(f"{split}_acc", metric, on_step=False, on_epoch=True, prog_bar=split == "val")

    def on_validation_epoch_end(self):
        self.log("val_error", 1.0 - self.acc["val_acc"].compute(), prog_bar=False)

    def on_test_epoch_end(self):
        self.log("test_error", 1.0 - self.acc["test_acc"].compute())

    def validation_step(self, b, batch_idx):
        self._evaluate(b, batch_idx, "val", 1)

    def test_step(self, b, batch_idx):
        self._evaluate(b, batch_idx, "test", self.args.test_rotations)

    def on_save_checkpoint(self, checkpoint: Dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["model_config"] = self.config
        checkpoint["classes"] = self.classes

    def describe(self) -> Dict:
        published = GROUPS[self.args.group][2]
        return {"task": NAME, "group": self.args.group, "group_paper": GROUPS[self.args.group][1],
                "kernel": self.args.kernel, "rotate": self.args.rotate,
                "test_rotations": self.args.test_rotations, "model_config": self.config,
                "classes": self.classes, "dataset": self.dataset,
                "published_modelnet40_test_acc": {"standard": published[0],
                                                  "implicit": published[1]},
                **{f"{k}_samples": v for k, v in self.sizes.items()}}


def dataset_label(data_dir: str, classes: str) -> Dict:
    """What the data is: ModelNet (from the user's copy) or the synthetic shapes."""
    marker = os.path.join(data_dir, "SYNTHETIC.json")
    if os.path.exists(marker):
        with open(marker) as f:
            return {"name": "synthetic shapes (not ModelNet)", "synthetic": True,
                    "generator": json.load(f)}
    return {"name": f"ModelNet{classes}" if classes != "auto" else "ModelNet-layout folder",
            "synthetic": False}


def build(args):
    from pyg_implicit.experiments.modelnet.data import ModelNetFolder

    if args.test_rotations < 1:
        raise SystemExit(f"--test-rotations must be >= 1, got {args.test_rotations}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise SystemExit(f"--val-fraction must lie in [0, 1), got {args.val_fraction}")
    if args.num_points < args.k + 1:
        raise SystemExit(f"--num-points must exceed --k, got {args.num_points} <= {args.k}")
    classes = None if args.classes == "auto" else int(args.classes)
    try:
        train_meshes = ModelNetFolder(args.data, classes, train=True, cache_dir=args.cache)
        test_meshes = ModelNetFolder(args.data, classes, train=False, cache_dir=args.cache)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    names = list(train_meshes.classes)
    labels = np.array([int(train_meshes[i].y) for i in range(len(train_meshes))])
    train_idx, val_idx = stratified_split(labels, args.val_fraction, args.split_seed)
    if not val_idx:
        raise SystemExit("the validation split is empty: raise --val-fraction")
    train = Clouds(train_meshes, train_idx, args.num_points)
    val = Clouds(train_meshes, val_idx, args.num_points, seed=args.split_seed + 1)
    test = Clouds(test_meshes, range(len(test_meshes)), args.num_points,
                  seed=args.split_seed + 2)
    sizes = {"train": len(train), "val": len(val), "test": len(test)}
    dataset = dataset_label(args.data, args.classes)
    task = ModelNetTask(args, model_config(args, len(names)), names, sizes, dataset)
    prefix = "shapes" if dataset["synthetic"] else f"modelnet{args.classes}"
    data = engine.SplitData(args, train, val, test)
    return task, data, f"{prefix}_{args.group}_{args.kernel}"
