"""The Hessian-corrected noise scale of McCandlish et al. 2018, measured at one checkpoint.

The simple noise scale B_simple = tr(Sigma) / |G|^2 (sec. 2.2, eq. 2.8) is the critical batch only
when the Hessian is a multiple of the identity. With the Hessian H of the loss, the batch at which
the optimal step's gain is half its noise-free value is (sec. 2.1, eq. 2.7)

    B_noise = tr(H Sigma) / (G^T H G),

which weighs the noise and the gradient by the curvature along them. This module measures both at
one set of weights, with Hessian-vector products (Pearlmutter 1994: the gradient of g . v), and
returns their ratio B_noise / B_simple; ``largebatch advise --hessian`` multiplies its run-level
B_simple average by that ratio (docs/noise_scale.md, "Hessian correction").

Estimators, from ``m`` small batches of ``b`` images (one BN group each, so each small batch's
gradient is what ghost BN gives; the "examples" are groups, as for the probe's B_simple):

* g_j, j = 1..m: the small batches' gradients; g = their mean; d_j = g_j - g.
* tr(Sigma) = b * sum_j |d_j|^2 / (m - 1); |G|^2 = |g|^2 - tr(Sigma) / (b m) (unbiased).
* tr(H Sigma) = b * sum_j d_j^T H_j d_j / (m - 1), where H_j is the Hessian of the mean loss over
  other small batches, drawn independently of the g's, so E[d^T H_j d] = d^T H d.
* G^T H G = g^T H g - tr(H Sigma) / (b m), with g^T H g averaged over several Hessian batches
  (the same bias correction as |G|^2).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from largebatch.config import config_from_dict
from largebatch.data import build_data
from largebatch.data.samplers import GlobalBatchSampler
from largebatch.plan import resolve
from largebatch.train.build import model_of

CALIBRATION_HESSIAN = 6.88
"""Factor on the Hessian-corrected run-level prediction (``advise --hessian``), fitted like
:data:`largebatch.study.noise_probe.CALIBRATION` on the same two calibration configurations: the
geometric mean of measured / (run-level B_simple x ratio), 1,056 / (408 x 0.564) = 4.59 for width16
and 1,437 / (329 x 0.424) = 10.30 for width8. Fitted 2026-12-07 21:42 UTC and frozen before any
held-out configuration's measurement (docs/noise_scale.md, "Hessian correction")."""

CALIBRATION_HESSIAN_SPREAD = 1.50
"""The Hessian calibration factor's scatter between its two configurations (as
:data:`largebatch.study.noise_probe.CALIBRATION_SPREAD`): sqrt(10.30 / 4.59)."""

HESSIAN_STATUS = (
    "calibrated on the 28-px ResNet-8 at widths 16 and 8; an option until the held-out check says whether it "
    "beats the plain prediction (docs/noise_scale.md)"
)
"""What ``advise`` says of the Hessian-corrected prediction."""


@dataclass(frozen=True)
class HessianNoise:
    """What :func:`hessian_noise_scale` measured (batch sizes in images).

    ``b_simple`` = trace / g_sq; ``b_noise`` = trace_h / g_h_g (inf when ``g_h_g`` is not positive:
    the curvature along the gradient is negative or below the estimate's noise); ``ratio`` =
    ``b_noise / b_simple``."""

    small_batch: int
    small_batches: int
    hessian_batches: int
    g_sq: float
    trace: float
    g_h_g: float
    trace_h: float
    b_simple: float
    b_noise: float
    ratio: float

    def as_dict(self) -> dict:
        return asdict(self)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vec: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        out.append(vec[i : i + p.numel()].view_as(p))
        i += p.numel()
    return out


def hessian_noise_scale(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    small_batches: int = 128,
    hessian_small_batches: int = 4,
    gradient_hvps: int = 8,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> HessianNoise:
    """B_simple and the Hessian-corrected B_noise of ``model`` at its current weights.

    Args:
        model: in train mode for the measurement (BN on each batch's own statistics, as in training);
            its weights and buffers (BN running statistics) are left as they were.
        batches: (images, labels) small batches of one BN group each, all of the same size b, drawn
            without repeats; ``small_batches + (small_batches + gradient_hvps) * hessian_small_batches``
            of them are used.
        small_batches: m, the small batches whose gradients give g, tr(Sigma) and tr(H Sigma) (>= 2).
        hessian_small_batches: small batches whose mean loss defines each Hessian batch H_j.
        gradient_hvps: Hessian batches over which g^T H g is averaged.
        loss_fn: (logits, labels) -> mean loss; cross-entropy by default.

    Returns:
        :class:`HessianNoise`.

    Raises:
        ValueError: ``small_batches`` < 2, or ``batches`` runs out or changes size.

    Source: McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", sec. 2.1 (eq. 2.7)
    and app. A.1; Pearlmutter 1994 for the Hessian-vector product.
    """
    if small_batches < 2 or hessian_small_batches < 1 or gradient_hvps < 1:
        raise ValueError(
            f"small_batches={small_batches}, hessian_small_batches={hessian_small_batches}, "
            f"gradient_hvps={gradient_hvps}: give >= 2, >= 1 and >= 1"
        )
    probe = _Probe(model, batches, loss_fn or nn.functional.cross_entropy, hessian_small_batches)
    buffers = {name: buf.clone() for name, buf in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        g_small = torch.stack([probe.grad_of(*probe.take()) for _ in range(small_batches)])
        m = small_batches
        g = g_small.mean(0)
        d = g_small - g
        trace_small = float((d * d).sum()) / (m - 1)  # tr of one small batch's gradient covariance
        trace_h_small = sum(float(d[j] @ probe.hvp(d[j])) for j in range(m)) / (m - 1)
        g_h_g_raw = sum(float(g @ probe.hvp(g)) for _ in range(gradient_hvps)) / gradient_hvps
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(buffers[name])
        model.train(was_training)
    return _estimates(probe.size, m, gradient_hvps, float(g @ g), trace_small, trace_h_small, g_h_g_raw)


def _estimates(
    b: int, m: int, gradient_hvps: int, g_sq_raw: float, trace_small: float, trace_h_small: float, g_h_g_raw: float
) -> HessianNoise:
    """The unbiased |G|^2 and G^T H G (each less its small-batch noise), the traces scaled to one
    image, and the two noise scales (McCandlish et al. 2018, app. A.1)."""
    g_sq = g_sq_raw - trace_small / m
    g_h_g = g_h_g_raw - trace_h_small / m
    trace, trace_h = b * trace_small, b * trace_h_small
    b_simple = trace / g_sq if g_sq > 0 else math.inf
    b_noise = trace_h / g_h_g if g_h_g > 0 else math.inf
    ratio = b_noise / b_simple if math.isfinite(b_simple) and math.isfinite(b_noise) else math.nan
    return HessianNoise(
        small_batch=b,
        small_batches=m,
        hessian_batches=m + gradient_hvps,
        g_sq=g_sq,
        trace=trace,
        g_h_g=g_h_g,
        trace_h=trace_h,
        b_simple=b_simple,
        b_noise=b_noise,
        ratio=ratio,
    )


class _Probe:
    """Draws small batches of one size and gives the gradient of one and Hessian-vector products
    (Pearlmutter 1994) over fresh Hessian batches of ``hessian_small_batches`` small batches each."""

    def __init__(self, model: nn.Module, batches, loss_fn, hessian_small_batches: int) -> None:
        self.model, self.batches, self.loss_fn = model, batches, loss_fn
        self.hessian_small_batches = hessian_small_batches
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.size: int | None = None

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next small batch. Raises ValueError when they run out or change size."""
        try:
            x, y = next(self.batches)
        except StopIteration:
            raise ValueError("the batches ran out: give more small batches") from None
        if self.size is None:
            self.size = x.shape[0]
        elif x.shape[0] != self.size:
            raise ValueError(f"small batches of {self.size} and {x.shape[0]} images: give batches of one size")
        return x, y

    def grad_of(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The flat gradient of the mean loss over (x, y)."""
        return _flat(torch.autograd.grad(self.loss_fn(self.model(x), y), self.params))

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v, H the Hessian of the mean loss over one fresh Hessian batch (each small batch through
        the model on its own, its BN on its own statistics)."""
        parts = [self.take() for _ in range(self.hessian_small_batches)]
        loss = sum(self.loss_fn(self.model(x), y) for x, y in parts) / len(parts)
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        dot = sum((g * u).sum() for g, u in zip(grads, _unflat(v, self.params)))
        return _flat(torch.autograd.grad(dot, self.params))


def measure_run(run_dir, *, seed: int = 0, small_batches: int = 128, **kwargs) -> HessianNoise:
    """:func:`hessian_noise_scale` at the final weights of a finished ``largebatch train`` run
    (``run_dir/model_final.pt`` with ``config.json``), on its training data with its augmentation,
    in small batches of the run's BN group (``train.bn.batch_size``; the per-worker batch when 0),
    on the CPU in fp32, the order drawn from ``seed``.

    Raises:
        FileNotFoundError: ``run_dir`` lacks ``model_final.pt`` or ``config.json``.
    """
    run_dir = Path(run_dir)
    for name in ("model_final.pt", "config.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name}: give the directory of a finished largebatch train run")
    cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    plan = resolve(cfg, cfg.train.nproc or 1)
    b = plan.bn_batch_size
    device = torch.device("cpu")
    data = build_data(cfg, device=device)
    model = model_of(cfg, data)
    model.load_state_dict(torch.load(run_dir / "model_final.pt", map_location=device, weights_only=True))
    sampler = GlobalBatchSampler(data.num_train, b, world_size=1, rank=0, seed=seed)

    def batches():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            yield from data.train_batches(sampler, seed=seed)
            epoch += 1

    smoothing = cfg.train.label_smoothing

    def loss_fn(logits, labels):
        return nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing)

    return hessian_noise_scale(model, batches(), small_batches=small_batches, loss_fn=loss_fn, **kwargs)
