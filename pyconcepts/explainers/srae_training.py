"""SRAE's training side: the grouped explanation autoencoders, the seed's Eq. (5) losses and
the Adam loop with per-class early stopping (the method and its choices:
``pyconcepts.explainers.srae``)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pyconcepts.errors import check_positive_ints
from pyconcepts.explainers.calls import CallMap

VARIANTS = ("srae", "nn", "sae", "cae")


@dataclass(frozen=True)
class LossConfig:
    """Weights of Eq. (5) and which terms a variant uses."""

    beta: float = 1.0
    q: float = 10.0
    eta: float = 0.5
    lambda1: float = 1e-4
    lambda2: float = 1e-4
    lambda3: float = 1e-4
    variant: str = "srae"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {self.variant!r}")
        for name in ("beta", "q", "eta", "lambda1", "lambda2", "lambda3"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if self.q <= 0:
            raise ValueError(f"q: expected q > 0, got {self.q!r}")


class GroupedAutoencoder(nn.Module):
    """K independent explanation autoencoders D → hidden… → n (x-layer), read-out and decoder.

    Weights carry a leading group axis: ``encoder_weights[i]`` is ``[K, d_in, d_out]``.
    ``forward(z)`` with z ``[B, D]`` (shared by all groups) returns E ``[K,B,n]``, ȳ ``[K,B]``
    and the reconstruction ``[K,B,D]``.
    """

    def __init__(
        self,
        n_groups: int,
        n_in: int,
        hidden: Sequence[int] = (800, 100),
        n_features: int = 5,
        x_activation: str = "linear",
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__()
        if x_activation not in ("linear", "relu"):
            raise ValueError(f"x_activation: expected 'linear' or 'relu', got {x_activation!r}")
        self.x_activation = x_activation
        dims = [n_in, *hidden, n_features]

        def uniform(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)
            # in place: at 1,000 classes the first layer alone is 4.1 GB, and every
            # out-of-place step held a second copy (the fit's peak, 8.1 GiB)
            w = torch.rand(*shape, generator=generator).mul_(2).sub_(1).mul_(bound)
            return nn.Parameter(w)

        self.encoder_weights = nn.ParameterList(
            [uniform(n_groups, a, b, fan_in=a) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.encoder_biases = nn.ParameterList(
            [uniform(n_groups, b, fan_in=a) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.decoder_weight = uniform(n_groups, n_features, n_in, fan_in=n_features)
        self.decoder_bias = uniform(n_groups, n_in, fan_in=n_features)
        self.readout_weight = uniform(n_groups, n_features, fan_in=n_features)
        self.readout_bias = nn.Parameter(torch.zeros(n_groups))

    @property
    def n_groups(self) -> int:
        return int(self.readout_bias.shape[0])

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """x-features ``[K, B, n]`` of features z ``[B, D]``."""
        # matmul broadcasts z over the groups; einsum folded them into one product through a
        # permuted copy of the first layer (3.9 GiB more at 1,000 classes, 13× slower)
        h = torch.matmul(z, self.encoder_weights[0]) + self.encoder_biases[0][:, None]
        last = len(self.encoder_weights) - 1
        for i in range(1, last + 1):
            h = torch.baddbmm(self.encoder_biases[i][:, None], F.relu(h), self.encoder_weights[i])
        return F.relu(h) if self.x_activation == "relu" else h

    def readout(self, e: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kbn,kn->kb", e, self.readout_weight) + self.readout_bias[:, None]

    def decode(self, e: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.decoder_bias[:, None], e, self.decoder_weight)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.encode(z)
        return e, self.readout(e), self.decode(e)

    def group(self, k: int) -> GroupedAutoencoder:
        """A one-group copy holding group k's weights (for per-class loops and export)."""
        return self.part(k, k + 1)

    def part(self, start: int, stop: int) -> GroupedAutoencoder:
        """A copy holding groups ``start:stop`` (trained apart, then written back by
        :meth:`put`)."""
        dims = [int(w.shape[1]) for w in self.encoder_weights] + [int(self.readout_weight.shape[1])]
        n = stop - start
        with torch.device("meta"):  # no initial draw: the global random state stays untouched
            copy = GroupedAutoencoder(n, dims[0], dims[1:-1], dims[-1], self.x_activation)
        like = self.readout_bias
        copy = copy.to_empty(device=like.device).to(like.dtype)
        with torch.no_grad():
            for (_, dst), (_, src) in zip(copy.named_parameters(), self.named_parameters()):
                dst.copy_(src[start:stop])
        return copy

    def put(self, start: int, part: GroupedAutoencoder) -> None:
        """Write ``part``'s weights into groups ``start:start + part.n_groups``."""
        with torch.no_grad():
            for (_, dst), (_, src) in zip(self.named_parameters(), part.named_parameters()):
                dst[start : start + part.n_groups].copy_(src)


def pull_away(e: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pull-away term per group: mean squared cosine between distinct x-feature columns.

    e ``[K, B, n]``, mask ``[K, B]`` (rows outside a group's sample are ignored) → ``[K]``.
    """
    em = e * mask[..., None]
    gram = em.transpose(1, 2) @ em  # [K, n, n]
    norms = gram.diagonal(dim1=1, dim2=2).clamp_min(eps).sqrt()
    cos2 = (gram / (norms[:, :, None] * norms[:, None, :])) ** 2
    n = e.shape[-1]
    if n < 2:
        return torch.zeros(e.shape[0], dtype=e.dtype, device=e.device)
    off = cos2.sum((1, 2)) - cos2.diagonal(dim1=1, dim2=2).sum(1)
    return off / (n * (n - 1))


def srae_losses(
    module: GroupedAutoencoder,
    z: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    config: LossConfig,
) -> dict[str, torch.Tensor]:
    """Per-group loss terms ``[K]`` of Eq. (5) for one mini-batch and their sum ``"total"``.

    z ``[B, D]`` standardised features, target ``[K, B]`` logits ŷ, mask ``[K, B]`` 0/1 sample
    membership, weight ``[K, B]`` faithfulness weights (positives up-weighted).
    """
    e, _, recon = module(z)
    readout_e = e.detach() if config.variant == "cae" else e
    approx = module.readout(readout_e)
    w = weight * mask
    faith = (w * (approx - target) ** 2).sum(1) / w.sum(1).clamp_min(1e-12)
    count = mask.sum(1).clamp_min(1.0)
    q_d = (mask[..., None] * (recon - z[None]) ** 2).sum(1) / count[:, None]  # [K, D]
    zero = torch.zeros_like(faith)
    if config.variant == "srae":
        recon_term = config.beta * torch.log1p(config.q * q_d).mean(1)
        ortho = config.eta * pull_away(e, mask)
    elif config.variant in ("sae", "cae"):
        recon_term, ortho = config.beta * q_d.mean(1), zero
    else:
        recon_term, ortho = zero, zero
    enc = sum(w_.pow(2).sum((1, 2)) for w_ in module.encoder_weights)
    reg = (
        config.lambda1 * enc
        + config.lambda2 * module.decoder_weight.pow(2).sum((1, 2))
        + config.lambda3 * module.readout_weight.pow(2).sum(1)
    )
    per_group = faith + recon_term + ortho + reg
    return {
        "total": per_group.sum(),
        "per_group": per_group,
        "faithfulness": faith,
        "reconstruction": recon_term,
        "orthogonality": ortho,
        "regularisation": reg,
    }


def validation_faithfulness(
    module: GroupedAutoencoder,
    z: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Weighted mean squared faithfulness error per group ``[K]`` on a held-out set."""
    num = torch.zeros(module.n_groups, dtype=z.dtype, device=z.device)
    den = torch.zeros_like(num)
    with torch.no_grad():
        for s in range(0, z.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            approx = module.readout(module.encode(z[sl]))
            w = weight[:, sl] * mask[:, sl]
            num += (w * (approx - target[:, sl]) ** 2).sum(1)
            den += w.sum(1)
    return num / den.clamp_min(1e-12)


@dataclass
class TrainResult:
    """Per-epoch history of a grouped training run (NaN for a group after its early stop)."""

    train_loss: list[list[float]]  # [epoch][group]
    val_faithfulness: list[list[float]]
    best_epoch: list[int]
    epochs_run: int


def train_grouped(
    module: GroupedAutoencoder,
    z: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    val: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    config: LossConfig,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    patience: int = 10,
    generator: Optional[torch.Generator] = None,
    progress: bool = True,
    class_batch_size: Optional[int] = None,
    map_parts: Optional[CallMap] = None,
) -> TrainResult:
    """Adam on the summed per-group losses; mini-batches of shared rows; early stopping per
    group on validation faithfulness (the best weights of each group are restored).

    The groups are trained ``class_batch_size`` at a time (None: all at once), each part
    from the same generator state, so every part sees the same mini-batches. Groups share no
    parameter, Adam is element-wise and each group stops at its own early stop (a group
    ``patience`` epochs without improvement keeps its best weights even while others train
    on), so the split changes no result beyond rounding; it bounds the optimiser state and
    activations to one part's (about 34 MiB per class at D = 1280 and the default sizes).
    ``map_parts``: runs the parts through this map (``(fn, argument tuples) -> results``, e.g.
    :func:`pyconcepts.distributed.ray_map`, one Ray task per part) instead of one after
    another here; each part's result depends on its own arguments alone. ``generator`` is
    read, not advanced: every part replays its state (None: a stream drawn from torch's
    global generator)."""
    k = module.n_groups
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    step = max(k, 1) if class_batch_size is None else class_batch_size
    check_positive_ints(class_batch_size=step)
    if k == 0:
        return TrainResult([], [], [], 0)
    bounds = [(start, min(start + step, k)) for start in range(0, k, step)]
    bar = tqdm(total=epochs * len(bounds), desc=f"SRAE[{config.variant}] x{k}",
               disable=not progress)  # fmt: skip
    training = _Training(z, target, mask, weight, val, config, epochs, batch_size, lr, patience)
    state = generator.get_state()
    results = []
    if map_parts is None:  # one part at a time, each written back before the next is copied
        for start, stop in bounds:
            part = module if (start, stop) == (0, k) else module.part(start, stop)
            trained, result = training.fit_part(state, start, stop, part, bar)
            if trained is not module:
                module.put(start, trained)
            results.append(result)
    else:
        one_part = functools.partial(training.fit_part, state)
        calls = [(start, stop, module.part(start, stop)) for start, stop in bounds]
        for (start, _), (trained, result) in zip(bounds, map_parts(one_part, calls)):
            module.put(start, trained)
            results.append(result)
        bar.update(epochs * len(bounds))
    bar.close()
    return _joined(results)


@dataclass(frozen=True)
class _Training:
    """What every part of a :func:`train_grouped` run shares: the rows, all groups' targets,
    masks and weights, the validation set and the settings (one object, so a map such as
    Ray's ships it once)."""

    z: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor
    val: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    config: LossConfig
    epochs: int
    batch_size: int
    lr: float
    patience: int

    def fit_part(
        self,
        state: torch.Tensor,
        start: int,
        stop: int,
        part: GroupedAutoencoder,
        bar: Any = None,
    ) -> tuple[GroupedAutoencoder, TrainResult]:
        """Groups ``start:stop`` (``part``, their weights) trained from the generator
        ``state``; returns the trained part and its history (a Ray task runs it with no
        ``bar``)."""
        generator = torch.Generator()
        generator.set_state(state)
        rows = slice(start, stop)
        z, batch_size, epochs = self.z, self.batch_size, self.epochs
        target, mask, weight = self.target[rows], self.mask[rows], self.weight[rows]
        val = self.val
        if val is not None:
            val = (val[0], val[1][rows], val[2][rows], val[3][rows])
        bar = tqdm(disable=True) if bar is None else bar
        opt = torch.optim.Adam(part.parameters(), lr=self.lr)
        n = z.shape[0]
        k = part.n_groups
        best = torch.full((k,), math.inf)
        best_epoch = [0] * k
        best_state = {name: p.detach().clone() for name, p in part.named_parameters()}
        stale = torch.zeros(k, dtype=torch.long)
        done = torch.zeros(k, dtype=torch.bool)  # stopped early: later epochs count for nothing
        history: list[list[float]] = []
        val_history: list[list[float]] = []
        epoch = 0
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).to(z.device)
            running = torch.zeros(k)
            for s in range(0, n, batch_size):
                idx = order[s : s + batch_size]
                losses = srae_losses(
                    part, z[idx], target[:, idx], mask[:, idx], weight[:, idx], self.config
                )
                opt.zero_grad(set_to_none=True)
                losses["total"].backward()
                opt.step()
                running += losses["per_group"].detach().cpu() * idx.numel() / n
            history.append(running.masked_fill(done, math.nan).tolist())
            bar.update(1)
            if val is None:
                continue
            score = validation_faithfulness(part, *val, batch_size=batch_size).cpu()
            val_history.append(score.masked_fill(done, math.nan).tolist())
            improved = (score < best) & ~done
            best = torch.where(improved, score, best)
            stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
            done |= stale >= self.patience
            for g in improved.nonzero().flatten().tolist():
                best_epoch[g] = epoch
            with torch.no_grad():
                sel = improved.to(z.device)
                for name, p in part.named_parameters():
                    shape = (-1,) + (1,) * (p.dim() - 1)
                    best_state[name] = torch.where(sel.reshape(shape), p.detach(), best_state[name])
            bar.set_postfix(val_faith=f"{float(score.mean()):.4f}")
            if bool(done.all()):
                bar.update(epochs - epoch - 1)
                break
        if val is not None:
            with torch.no_grad():
                for name, p in part.named_parameters():
                    p.copy_(best_state[name])
        return part, TrainResult(history, val_history, best_epoch, epoch + 1)


def _joined(parts: Sequence[TrainResult]) -> TrainResult:
    """The parts' histories side by side (NaN after a part's last epoch)."""

    def rows(tables: list[list[list[float]]], n_epochs: int) -> list[list[float]]:
        width = [len(t[0]) if t else 0 for t in tables]
        return [
            [x for t, w in zip(tables, width) for x in (t[e] if e < len(t) else [math.nan] * w)]
            for e in range(n_epochs)
        ]

    n_epochs = max(p.epochs_run for p in parts)
    n_val = max(len(p.val_faithfulness) for p in parts)
    return TrainResult(
        rows([p.train_loss for p in parts], n_epochs),
        rows([p.val_faithfulness for p in parts], n_val),
        [e for p in parts for e in p.best_epoch],
        n_epochs,
    )


def class_samples(
    labels: torch.Tensor,
    classes: Sequence[int],
    n_positive: Optional[int],
    n_negative: Optional[int],
    positive_weight: Optional[float],
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-all sample mask ``[K, N]`` (sampled positives/negatives per class) and the
    faithfulness weights ``[K, N]`` (positives × positive_weight, default n_neg/n_pos)."""
    n = labels.shape[0]
    mask = torch.zeros(len(classes), n)
    weight = torch.ones(len(classes), n)
    for row, c in enumerate(classes):
        for is_pos, cap in ((True, n_positive), (False, n_negative)):
            idx = ((labels == c) == is_pos).nonzero().flatten()
            if cap is not None and idx.numel() > cap:
                idx = idx[torch.randperm(idx.numel(), generator=generator)[:cap]]
            mask[row, idx] = 1.0
        pos = (labels == c).float() * mask[row]
        n_pos, n_neg = float(pos.sum()), float(mask[row].sum() - pos.sum())
        w = positive_weight if positive_weight is not None else max(n_neg / max(n_pos, 1.0), 1.0)
        weight[row] = torch.where(pos > 0, torch.tensor(float(w)), torch.tensor(1.0))
    return mask, weight
