"""The training engine every experiment shares: PyTorch Lightning plus what the
experiments need on top of it.

Lightning brings the loop, DDP and multi-node launch (``--devices K``, or
``torchrun``), checkpoint/resume, progress bars and CSV logs. Added here, as
callbacks and helpers: the training options (declared once), the EMA of the weights, a
learning-rate schedule annealed over the epochs or a time budget, a per-epoch
history kept in the checkpoints, run folders that are never reused, resumption
only when asked and only of the same run, and the result JSON.

An experiment (:mod:`pyg_implicit.experiments`) provides ``add_options(parser)``
and ``build(args) -> (TrainingModule, LightningDataModule, run_name)`` (graph
datasets: :class:`SplitData`); its ``TrainingModule`` may carry ``trainer_options``
(more ``lightning.Trainer`` arguments, e.g. ``limit_train_batches``).
"""
from __future__ import annotations

import math
import os
import shlex
import sys
import time
from typing import Dict, Optional

# MKL's float32 GEMMs round differently with the heap alignment of their operands, so
# two launches of one run differed in the last bits of the weights (and, now and then,
# in the test metric). Its conditional numerical reproducibility mode fixes that; MKL
# reads the variable at its first call, which comes after this import. A user's own
# setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler, Subset

from pyg_implicit.experiments import runs

BEST = "best.ckpt"


def add_training_options(p) -> None:
    """Options every experiment has; an experiment changes defaults with ``set_defaults``."""
    a = p.add_argument
    a("--epochs", type=int, default=100)
    a("--time-limit", type=float, default=0.0,
      help="training budget in minutes (0: none): the learning rate anneals over the epochs "
           "or this budget, whichever ends first; no epoch starts after it")
    a("--batch-size", type=int, default=32, help="per process")
    a("--lr", type=float, default=1e-3)
    a("--optimizer", default="adamw", choices=("adam", "adamw"),
      help="adam: weight decay as an L2 term; adamw: decoupled weight decay")
    a("--weight-decay", type=float, default=None, help="default: 0.05 (adamw), 1e-8 (adam)")
    a("--warmup-epochs", type=int, default=1)
    a("--ema", type=float, default=0.999, help="decay of the weights' moving average, which "
      "is validated, checkpointed and tested (0: off)")
    a("--seed", type=int, default=0)
    a("--accelerator", default="auto", help="auto, cpu, gpu")
    a("--devices", type=int, default=1, help="processes per node (DDP when more than one)")
    a("--num-nodes", type=int, default=1)
    a("--threads", type=int, default=None, help="torch CPU threads per process (default 1)")
    a("--run-name", default=None, help="name of the run folder and of the recorded result")
    a("--out", default=None, help=f"the run's folder, missing or empty for a new run "
      f"(default {runs.RUNS_DIR}/<run-name>-<UTC time>-<pid>)")
    a("--resume", default=None, metavar="PATH|auto", help="continue a run: 'auto' (the "
      "last checkpoint in --out), a run folder or a checkpoint (default: start fresh)")
    a("--allow-change", action="append", default=[], metavar="KEY",
      help="with --resume: accept this changed option or 'data' (recorded)")
    a("--record", nargs="?", const="auto", default=None, metavar="PATH", help="also write "
      "the result to PATH (no value: benchmarks/results/<run-name>.json); never replaces")
    a("--no-progress", action="store_true")


class TrainingModule(pl.LightningModule):
    """A LightningModule with the optimiser the training options ask for; experiments
    implement the steps. ``run`` (metadata set by :func:`fit`) goes into checkpoints."""

    def __init__(self, args):
        super().__init__()
        self.args, self.run = args, None

    def configure_optimizers(self):
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.args.optimizer]
        return cls(self.parameters(), lr=self.args.lr, weight_decay=self.args.weight_decay)

    def on_save_checkpoint(self, checkpoint: Dict) -> None:
        checkpoint["run"] = self.run


class AnnealedSchedule(Callback):
    """Linear warm-up, then cosine decay to 1% of the peak over the epochs or, with a
    time budget, over the time if that runs out first; stops once the budget is spent.
    Progress in time is fixed per epoch (the same on every rank): the budget used when
    the epoch starts, plus the last epoch's share spread over its steps."""

    def __init__(self, base_lr: float, epochs: int, warmup_epochs: int, budget_s: float):
        self.base_lr, self.epochs, self.warmup_epochs = base_lr, epochs, warmup_epochs
        self.budget_s = budget_s or math.inf
        self.used_s, self.last_epoch_s, self._t0, self._step0 = 0.0, 0.0, 0.0, 0

    def state_dict(self):
        return {"used_s": self.used_s, "last_epoch_s": self.last_epoch_s}

    def load_state_dict(self, state):
        self.used_s, self.last_epoch_s = state["used_s"], state["last_epoch_s"]

    def on_train_epoch_start(self, trainer, module):
        self._t0, self._step0 = time.time(), trainer.global_step

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        warm = self.warmup_epochs * steps_per_epoch
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, self.epochs * steps_per_epoch - warm)
        within = min(1.0, (step - self._step0) / steps_per_epoch)
        progress = min(1.0, max(progress, (self.used_s + within * self.last_epoch_s)
                                / self.budget_s))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        lr = self.base_lr * self.lr_factor(trainer.global_step, trainer.num_training_batches)
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def on_train_epoch_end(self, trainer, module):
        # rank 0's clock decides, so that every rank anneals and stops alike
        self.last_epoch_s = trainer.strategy.broadcast(time.time() - self._t0)
        self.used_s += self.last_epoch_s
        if self.used_s >= self.budget_s:
            trainer.should_stop = True


class History(Callback):
    """One row per epoch (the logged epoch metrics, learning rate, seconds), kept in the
    checkpoints so that a resumed run continues it; printed and appended to ``log_path``."""

    def __init__(self, log_path: Optional[str]):
        self.rows, self.log_path, self._t0 = [], log_path, 0.0

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        self.rows = state["rows"]

    def on_train_epoch_start(self, trainer, module):
        self._t0 = time.time()

    def on_train_epoch_end(self, trainer, module):
        row = {"epoch": trainer.current_epoch + 1,
               **{k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k != "loss"},
               "lr": trainer.optimizers[0].param_groups[0]["lr"],
               "time_s": time.time() - self._t0}
        self.rows.append(row)
        log(self.log_path, f"epoch {row['epoch']:4d}  " + "  ".join(
            f"{k} {v:.6g}" for k, v in row.items() if k != "epoch"))


class WeightEMA(Callback):
    """Exponential moving average of the parameters, validated, checkpointed (as the
    checkpoint's ``state_dict``; the raw weights as ``raw_state_dict``) and tested. The
    decay warms up as ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates, so that
    the initial weights are forgotten within the first epochs.

    Lightning's ``WeightAveraging`` keeps a deep copy of the module and swaps every
    buffer too: the constant kernel bases (tens of MB for O(3)) and escnn's expanded
    weights, which escnn computes in ``eval()``, before the swap. Here only the
    parameters are kept and swapped, and ``eval()`` runs again after the swap."""

    def __init__(self, decay: float):
        self.decay, self.num_updates, self.average = decay, 0, None

    def _params(self, module):
        return [p.detach() for p in module.parameters()]

    def on_fit_start(self, trainer, module):
        if self.average is None:
            self.average = [p.clone() for p in self._params(module)]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        t = self.num_updates
        torch._foreach_lerp_(self.average, self._params(module),
                             1.0 - min(self.decay, (1.0 + t) / (10.0 + t)))
        self.num_updates += 1

    @torch.no_grad()
    def _swap(self, module):
        for avg, p in zip(self.average, self._params(module)):
            tmp = p.clone()
            p.copy_(avg)
            avg.copy_(tmp)
        module.train(module.training)  # escnn's eval() caches follow the new weights

    def on_validation_epoch_start(self, trainer, module):
        self._swap(module)  # validate the average

    def on_validation_epoch_end(self, trainer, module):
        self._swap(module)  # train the raw weights

    def state_dict(self):
        return {"num_updates": self.num_updates}

    def load_state_dict(self, state):
        self.num_updates = state["num_updates"]

    def on_save_checkpoint(self, trainer, module, checkpoint):
        raw = checkpoint["state_dict"]
        names = [n for n, _ in module.named_parameters()]
        checkpoint["raw_state_dict"] = raw
        checkpoint["state_dict"] = {**raw, **dict(zip(names, self.average))}

    def on_load_checkpoint(self, trainer, module, checkpoint):
        # the module was loaded with the average; continue from the raw weights
        self.average = [p.clone() for p in self._params(module)]
        module.load_state_dict(checkpoint["raw_state_dict"])


def log(path: Optional[str], line: str) -> None:
    """Print on rank 0 and append to ``path``."""
    if path is not None:
        print(line, flush=True)
        with open(path, "a") as f:
            f.write(line + "\n")


def train_loader(dataset, batch_size: int, seed: int, trainer, **kw) -> DataLoader:
    """Shuffled batches, each process a share of every global batch: the epoch's
    permutation depends on the seed and epoch only, not on the number of processes."""
    sampler = DistributedSampler(dataset, trainer.world_size, trainer.global_rank, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kw)


def eval_loader(dataset, batch_size: int, trainer, **kw) -> DataLoader:
    """Each process every ``world_size``-th sample, none twice (metrics that sum over
    processes are then exact; a padded ``DistributedSampler`` would count some twice)."""
    share = Subset(dataset, range(trainer.global_rank, len(dataset), trainer.world_size))
    return DataLoader(share, batch_size=batch_size, shuffle=False, **kw)


def collate_graphs(items):
    """One PyG ``Batch`` of a list of ``Data`` (molecules, point clouds)."""
    from torch_geometric.data import Batch
    return Batch.from_data_list(items)


class SplitData(pl.LightningDataModule):
    """The train/validation/test datasets of a run behind :func:`train_loader` and
    :func:`eval_loader`: ``args.batch_size`` per training batch, ``eval_batch_size``
    (default the same) per evaluation batch, items joined by ``collate_fn``."""

    def __init__(self, args, train, val, test, collate_fn=collate_graphs,
                 eval_batch_size: Optional[int] = None):
        super().__init__()
        self.args, self.train, self.val, self.test = args, train, val, test
        self.collate_fn = collate_fn
        self.eval_batch_size = eval_batch_size or args.batch_size

    def train_dataloader(self):
        return train_loader(self.train, self.args.batch_size, self.args.seed, self.trainer,
                            collate_fn=self.collate_fn)

    def _eval(self, dataset):
        return eval_loader(dataset, self.eval_batch_size, self.trainer,
                           collate_fn=self.collate_fn)

    def val_dataloader(self):
        return self._eval(self.val)

    def test_dataloader(self):
        return self._eval(self.test)


def _world(args) -> Dict:
    """Devices and nodes; under ``torchrun`` the launcher's (Lightning adopts them)."""
    env = os.environ
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:
        return {"devices": int(env["LOCAL_WORLD_SIZE"]),
                "num_nodes": int(env["WORLD_SIZE"]) // int(env["LOCAL_WORLD_SIZE"])}
    return {"devices": args.devices, "num_nodes": args.num_nodes}


def fit(experiment, args, argv) -> Optional[Dict]:
    """Train, select on validation, test the selected weights; returns the result
    (on rank 0) after writing it to the run folder (and ``--record``)."""
    t_start, root = time.time(), runs.repo_root()
    code = runs.code_version(root)  # at launch: the code that trains
    if args.weight_decay is None:
        args.weight_decay = 0.05 if args.optimizer == "adamw" else 1e-8
    torch.set_num_threads(args.threads or 1)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    module, data, run_name = experiment.build(args)
    run_name = args.run_name or run_name
    world = _world(args)
    ranks = world["devices"] * world["num_nodes"]
    env = os.environ
    main = int(env.get("RANK", int(env.get("NODE_RANK", 0)) * world["devices"]
                       + int(env.get("LOCAL_RANK", 0)))) == 0
    record = args.record if args.record != "auto" else os.path.join(
        root, "benchmarks", "results", f"{run_name}.json")
    if record and os.path.exists(record):
        raise SystemExit(f"--record: {record} already holds a recorded result")
    meta = runs.run_meta(experiment.NAME, args, code)
    resume = runs.resume_checkpoint(args.resume, args.out) if args.resume else None
    if resume:
        meta = runs.check_resumable(resume, meta, args.allow_change)
        run_dir = os.path.dirname(resume)
    elif ranks > 1 and "LOCAL_WORLD_SIZE" in env and args.out is None:
        raise SystemExit("a torchrun launch needs --out DIR: its processes start "
                         "together and must agree on the run folder")
    else:
        run_dir = runs.new_run_dir(args.out, run_name, create=main)
    module.run = meta
    log_path = os.path.join(run_dir, "train.log") if main else None
    history = History(log_path)
    callbacks = [AnnealedSchedule(args.lr, args.epochs, args.warmup_epochs,
                                  60.0 * args.time_limit), history,
                 ModelCheckpoint(run_dir, "best", monitor=module.monitor, save_last=True,
                                 save_on_train_epoch_end=True, enable_version_counter=False)]
    if args.ema:
        if not 0.0 < args.ema < 1.0:
            raise SystemExit(f"--ema must be a decay in (0, 1), got {args.ema}")
        callbacks.append(WeightEMA(args.ema))
    trainer = pl.Trainer(
        accelerator=args.accelerator, **world,
        # the buffers are constant kernel bases (30 MB for O(3)): no broadcast per step
        strategy=DDPStrategy(broadcast_buffers=False) if ranks > 1 else "auto",
        max_epochs=args.epochs, callbacks=callbacks, default_root_dir=run_dir,
        logger=pl.loggers.CSVLogger(run_dir, name="logs"),  # a version per launch
        use_distributed_sampler=False, enable_progress_bar=not args.no_progress,
        enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0,
        **getattr(module, "trainer_options", {}))
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    log(log_path, f"{run_name}: {params} parameters, {ranks} process(es), run folder {run_dir}"
        + (f"; resumed from {resume}" if resume else ""))
    trainer.fit(module, data, ckpt_path=resume)
    if torch.distributed.is_initialized():  # the processes part here
        torch.distributed.destroy_process_group()
    if not trainer.is_global_zero:
        return None
    # tested in one process: every sample once
    best = os.path.join(run_dir, BEST)
    module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)
                           ["state_dict"])
    tester = pl.Trainer(accelerator=args.accelerator, devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    tested = tester.test(module, data, verbose=False)[0]
    launcher = "torchrun -m" if "LOCAL_WORLD_SIZE" in os.environ else "python -m"
    result = {**{k: float(v) for k, v in tested.items()},
              "best_" + module.monitor: float(trainer.checkpoint_callback.best_model_score),
              "epochs_completed": len(history.rows), "wall_time_s": time.time() - t_start,
              "command": f"{launcher} pyg_implicit.train {shlex.join(argv)}",
              "params": params, "processes": ranks, "device": str(module.device),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "lightning": pl.__version__, "mkl_cbwr": os.environ.get("MKL_CBWR"),
              "git_commit": code["commit"],
              "run_dir": os.path.abspath(run_dir), "data": os.path.abspath(args.data),
              "data_fingerprint": meta["data"], "experiment": meta["experiment"],
              "config": meta["config"], "code": code, "resumes": meta["resumes"],
              **module.describe(), "history": history.rows}
    runs.write_json(result, os.path.join(run_dir, runs.RESULT))
    if record:
        runs.write_json(result, record, exclusive=True)
    log(log_path, "test: " + ", ".join(f"{k} {v:.6g}" for k, v in tested.items())
        + f"; wall time {result['wall_time_s']:.1f}s; result in {run_dir}"
        + (f" and {record}" if record else ""))
    return result


def main(argv=None) -> int:
    import argparse
    import importlib

    from pyg_implicit.experiments import EXPERIMENTS

    p = argparse.ArgumentParser(prog="python -m pyg_implicit.train",
                                description="Train a pyg_implicit experiment.")
    sub = p.add_subparsers(dest="experiment", required=True)
    for name, path in EXPERIMENTS.items():
        experiment = importlib.import_module(path)
        q = sub.add_parser(name, help=experiment.__doc__.strip().splitlines()[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_training_options(q)
        experiment.add_options(q)
        q.set_defaults(experiment_module=experiment)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    experiment = args.experiment_module
    del args.experiment_module
    fit(experiment, args, argv)
    return 0
