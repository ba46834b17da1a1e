"""One training loop and one accuracy for every model the project trains.

:func:`fit` is AdamW on mini-batches with a learning-rate schedule, and a divergence
guard: a non-finite loss (with ``check="all"`` also a non-finite gradient, or a
parameter after the update) restores the model's last good checkpoint and raises
:class:`optprune.errors.TrainingDivergedError` carrying it (and writes it to
``checkpoint_path`` in the kit's checkpoint format, when given).

Batches come from one of three sources:

* ``epochs=E``: E passes over (x, y), each in a fresh random order (``torch.randperm``
  of a generator seeded by ``seed``), the last batch of a pass possibly smaller;
* ``steps=T`` with tensors: T batches of ``min(batch_size, N)`` rows drawn uniformly
  with replacement (``torch.randint``), as training-based pruners step through data;
* ``steps=T`` with ``x`` a callable ``step -> (xb, yb)``: a stream (fresh questions
  each step, say).

Schedules (per optimizer step): ``"cosine"`` lr * (1 + cos(pi t / T)) / 2;
``"constant"``; ``"onecycle"`` torch's OneCycleLR over ``schedule_steps`` (a schedule
longer than the run stops part-way along it).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import torch
from torch import nn

from ..errors import TrainingDivergedError, check

__all__ = ["SCHEDULES", "FitHistory", "accuracy", "fit"]

SCHEDULES = ("cosine", "constant", "onecycle")

BatchLoss = Callable[[torch.Tensor, torch.Tensor, int, int],
                     Union[torch.Tensor, tuple[torch.Tensor, dict[str, float]]]]
Source = Union[torch.Tensor, Callable[[int], tuple[torch.Tensor, torch.Tensor]]]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of rows of ``x`` whose arg-max output is the label ``y``, in eval mode
    (the model's mode is restored), ``batch_size`` rows at a time on the model's device."""
    check(x.shape[0] == y.shape[0] and x.shape[0] > 0, "The data of accuracy",
          "non-empty x and y of equal length", (tuple(x.shape), tuple(y.shape)))
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else x.device
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i:i + batch_size].to(device))
        correct += int((out.argmax(1) == y[i:i + batch_size].to(device)).sum())
    model.train(was)
    return correct / x.shape[0]


@dataclass
class FitHistory:
    """What :func:`fit` did: the loss of every step, the mean per epoch (epochs mode,
    weighted by batch size), the extra values a ``batch_loss`` returned (one dict a
    step), steps taken, wall time, and whether ``time_limit_s`` cut the run short."""

    loss: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    logs: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    time_s: float = 0.0
    stopped_by_time_limit: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "epoch_loss": self.epoch_loss, "logs": self.logs,
                "steps": self.steps, "time_s": self.time_s,
                "stopped_by_time_limit": self.stopped_by_time_limit}


class _Guard:
    """The last good state (trainable parameters and buffers; frozen parameters never
    change), restored on divergence."""

    def __init__(self, model: nn.Module, check_all: bool, path: str | os.PathLike | None,
                 spec: dict[str, Any] | None) -> None:
        self.model, self.check_all, self.path, self.spec = model, check_all, path, spec
        self.good: dict[str, torch.Tensor] = {}
        self.good_step, self.good_epochs = 0, 0

    def save(self, step: int, epochs_done: int) -> None:
        self.good = {k: v.detach().clone()
                     for k, v in self.model.state_dict(keep_vars=True).items()
                     if not (isinstance(v, nn.Parameter) and not v.requires_grad)}
        self.good_step, self.good_epochs = step, epochs_done

    def bad_gradient(self) -> str | None:
        return _first_nonfinite(self.model, grads=True) if self.check_all else None

    def bad_parameter(self) -> str | None:
        bad = _first_nonfinite(self.model, grads=False) if self.check_all else None
        return None if bad is None else f"parameter {bad} after the update"

    def write(self) -> str | None:
        if self.path is None:
            return None
        from .checkpoint import save_checkpoint

        full = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        save_checkpoint(self.path, full, self.spec, step=self.good_step,
                        epochs_completed=self.good_epochs)
        return str(self.path)

    def fail(self, what: str, step: int, epoch: int | None, hint: str) -> TrainingDivergedError:
        self.model.load_state_dict(self.good, strict=False)
        self.model.eval()
        path = self.write()
        where = f"epoch {epoch}, step {step}" if epoch is not None else f"step {step}"
        saved = f" and written to {path}" if path else ""
        return TrainingDivergedError(
            f"Training diverged at {where}: non-finite {what}. The model was reset to its last "
            f"good checkpoint (step {self.good_step}, {self.good_epochs} epochs completed), "
            f"kept in the error's 'checkpoint'{saved}. {hint}",
            step=step, epoch=epoch, checkpoint_path=path,
            checkpoint={k: v.detach().clone() for k, v in self.model.state_dict().items()})


def _first_nonfinite(model: nn.Module, grads: bool) -> str | None:
    """Name of the first parameter (``grads``: gradient) holding NaN/inf, else None; one
    fused norm over all tensors, so the check costs one sync."""
    named: list[tuple[str, torch.Tensor]] = []
    for n, p in model.named_parameters():
        t = p.grad if grads else p
        if t is not None:
            named.append((n, t))
    if not named:
        return None
    norms = torch.stack(torch._foreach_norm([t for _, t in named]))
    bad = ~torch.isfinite(norms)
    if not bool(bad.any()):
        return None
    name = named[int(torch.nonzero(bad)[0])][0]
    return f"{name}.grad" if grads else name


def _batches(x: Source, y: torch.Tensor | None, epochs: int | None, steps: int | None,
             batch_size: int, seed: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(epoch or -1, xb, yb) per step; an epoch boundary is marked by a change of epoch."""
    g = torch.Generator().manual_seed(seed)
    if callable(x):
        for t in range(steps or 0):
            xb, yb = x(t)
            yield -1, xb, yb
        return
    assert y is not None
    n = x.shape[0]
    if epochs is not None:
        for ep in range(epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                yield ep, x[idx], y[idx]
        return
    for _ in range(steps or 0):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        yield -1, x[idx], y[idx]


def _scheduler(opt: torch.optim.Optimizer, schedule: str, total: int, lr: float,
               schedule_steps: int | None) -> torch.optim.lr_scheduler.LRScheduler | None:
    if schedule == "constant" or total == 0:
        return None
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups],
            total_steps=max(total, schedule_steps or total), pct_start=0.1)
    length = max(total, schedule_steps or total)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / length)))


def _optimizer(model: nn.Module, params: Iterable[Any] | None, lr: float,
               weight_decay: float) -> torch.optim.Optimizer:
    groups = list(params) if params is not None else [p for p in model.parameters()
                                                      if p.requires_grad]
    check(len(groups) > 0, "The parameters to train", "non-empty", 0,
          "Every parameter has requires_grad=False; unfreeze some or pass 'params'.")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def _check_args(x: Source, y: torch.Tensor | None, epochs: int | None, steps: int | None,
                batch_size: int, schedule: str, check_finite: str) -> None:
    check((epochs is None) != (steps is None), "The length of training",
          "given by exactly one of 'epochs' and 'steps'", {"epochs": epochs, "steps": steps})
    for v, what in ((epochs, "epochs"), (steps, "steps")):
        if v is not None:
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                  f"The number of training '{what}'", "a non-negative integer", v)
    check(isinstance(batch_size, int) and batch_size >= 1, "The 'batch_size'",
          "a positive integer", batch_size)
    check(schedule in SCHEDULES, "The learning-rate 'schedule'", f"one of {SCHEDULES}", schedule)
    check(check_finite in ("loss", "all"), "The divergence check 'check_finite'",
          "'loss' or 'all'", check_finite)
    if callable(x):
        check(steps is not None, "Training from a batch stream", "given a number of 'steps'",
              epochs)
        return
    check(isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), "The training data",
          "tensors x (N, ...) and y (N, ...)", (type(x).__name__, type(y).__name__))
    assert isinstance(y, torch.Tensor)
    check(x.shape[0] == y.shape[0] and x.shape[0] > 0, "The training data",
          "non-empty x and y of equal length", (tuple(x.shape), tuple(y.shape)))


def fit(model: nn.Module, x: Source, y: torch.Tensor | None = None, *,
        epochs: int | None = None, steps: int | None = None, batch_size: int = 64,
        lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0,
        params: Iterable[Any] | None = None, schedule: str = "cosine",
        schedule_steps: int | None = None, clip_grad_norm: float | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        batch_loss: BatchLoss | None = None,
        after_step: Callable[[int], None] | None = None,
        after_epoch: Callable[[int], None] | None = None,
        check_finite: str = "loss", checkpoint_every: int = 10,
        checkpoint_path: str | os.PathLike | None = None, spec: dict[str, Any] | None = None,
        time_limit_s: float | None = None, progress: str | None = None,
        hint: str = "Lower the learning rate.") -> FitHistory:
    """Train ``model`` in place (see the module docstring for batches and schedules); it
    is left in eval mode. Returns a :class:`FitHistory`.

    * ``params``: parameters or AdamW parameter groups (dicts with their own ``lr`` /
      ``weight_decay``); default every parameter with ``requires_grad``.
    * The loss of a batch is ``loss_fn(model(xb), yb)`` (default cross-entropy), or
      ``batch_loss(xb, yb, step, epoch)`` when the forward pass is not plain (it returns
      the loss, or the loss and a dict of floats logged in ``FitHistory.logs``).
    * ``after_step(step)`` runs after every optimizer step (masks re-applied, say),
      ``after_epoch(epoch)`` after every pass (epochs mode).
    * Divergence: ``check_finite="loss"`` checks the loss; ``"all"`` also every gradient
      before the step and every parameter after it. The last good checkpoint is taken
      at the start of every epoch (epochs mode) or every ``checkpoint_every`` steps;
      with ``checkpoint_path`` it is written there on divergence and the final state at
      the end (``spec`` goes into the file). ``hint`` ends the error message.
    * ``time_limit_s`` stops after the step that crosses it; ``progress`` names a tqdm bar.
    """
    _check_args(x, y, epochs, steps, batch_size, schedule, check_finite)
    check(loss_fn is None or batch_loss is None, "The loss", "given by 'loss_fn' or "
          "'batch_loss', not both", "both")
    check(isinstance(checkpoint_every, int) and checkpoint_every >= 1, "The 'checkpoint_every'",
          "a positive integer", checkpoint_every)
    if checkpoint_path is not None:  # fail before training, not after it
        check(Path(checkpoint_path).parent.is_dir(), "The folder of 'checkpoint_path'",
              "an existing directory", str(checkpoint_path))
    n = None if callable(x) else x.shape[0]
    total = steps if steps is not None else (epochs or 0) * math.ceil((n or 1) / batch_size)
    if total == 0:
        model.eval()
        return FitHistory()
    opt = _optimizer(model, params, lr, weight_decay)
    run = _Run(model, opt, _scheduler(opt, schedule, total, lr, schedule_steps),
               _Guard(model, check_finite == "all", checkpoint_path, spec), hint,
               _loss_of(model, loss_fn, batch_loss), clip_grad_norm, after_step, after_epoch,
               epochs is not None)
    run.bar = (_progress(progress, total, "step") if epochs is None
               else _progress(progress, epochs, "epoch"))
    t0 = time.perf_counter()
    model.train()
    for step, (ep, xb, yb) in enumerate(_batches(x, y, epochs, steps, batch_size, seed)):
        if ep > run.epoch:  # a pass ended: record it, run the hook, checkpoint
            run.end_epoch()
            run.epoch = ep
            run.guard.save(step, ep)
        elif epochs is None and step % checkpoint_every == 0 and step > 0:
            run.guard.save(step, 0)
        run.step(step, xb, yb)
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            run.hist.stopped_by_time_limit = True
            break
    return run.finish(checkpoint_path is not None, time.perf_counter() - t0)


def _loss_of(model: nn.Module,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
             batch_loss: BatchLoss | None) -> BatchLoss:
    if batch_loss is not None:
        return batch_loss
    lf = loss_fn or nn.functional.cross_entropy
    return lambda xb, yb, _step, _epoch: lf(model(xb), yb)


class _Run:
    """One :func:`fit`: the optimizer step with its checks, the epoch bookkeeping."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler | None, guard: _Guard, hint: str,
                 loss: BatchLoss, clip: float | None, after_step: Callable[[int], None] | None,
                 after_epoch: Callable[[int], None] | None, epochs_mode: bool) -> None:
        self.model, self.opt, self.sched, self.guard, self.hint = model, opt, sched, guard, hint
        self.loss, self.clip = loss, clip
        self.after_step, self.after_epoch, self.epochs_mode = after_step, after_epoch, epochs_mode
        self.hist = FitHistory()
        self.bar: Any = None
        self.epoch, self.ep_sum, self.ep_n = 0, 0.0, 0
        guard.save(0, 0)

    def _fail(self, what: str, step: int) -> TrainingDivergedError:
        return self.guard.fail(what, step, self.epoch if self.epochs_mode else None, self.hint)

    def step(self, step: int, xb: torch.Tensor, yb: torch.Tensor) -> None:
        out = self.loss(xb, yb, step, self.epoch if self.epochs_mode else -1)
        if isinstance(out, tuple):
            out, logs = out
            self.hist.logs.append(dict(logs))
        loss = out
        if not torch.isfinite(loss):
            raise self._fail(f"loss {loss.item()}", step)
        self.opt.zero_grad()
        loss.backward()
        bad = self.guard.bad_gradient()
        if bad is not None:
            raise self._fail(f"gradient of {bad}", step)
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        if self.after_step is not None:
            self.after_step(step)
            self.model.train()
        bad = self.guard.bad_parameter()
        if bad is not None:
            raise self._fail(bad, step)
        value = loss.item()
        self.hist.loss.append(value)
        self.hist.steps = step + 1
        self.ep_sum, self.ep_n = self.ep_sum + value * xb.shape[0], self.ep_n + xb.shape[0]
        if not self.epochs_mode and self.bar is not None:
            self.bar.update(1)

    def end_epoch(self) -> None:
        self.hist.epoch_loss.append(self.ep_sum / self.ep_n)
        self.ep_sum, self.ep_n = 0.0, 0
        if self.after_epoch is not None:
            self.after_epoch(self.epoch)
            self.model.train()
        if self.bar is not None:
            self.bar.update(1)

    def finish(self, write: bool, time_s: float) -> FitHistory:
        if self.epochs_mode and self.ep_n:
            self.end_epoch()
        if self.bar is not None:
            self.bar.close()
        self.model.eval()
        if write:
            self.guard.save(self.hist.steps, len(self.hist.epoch_loss))
            self.guard.write()
        self.hist.time_s = time_s
        return self.hist


def _progress(desc: str | None, total: int, unit: str) -> Any:
    if not desc:
        return None
    from .._extras import require

    return require("tqdm", "torch", "progress bars").tqdm(total=total, desc=desc, leave=False,
                                                         unit=unit)
