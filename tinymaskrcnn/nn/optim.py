"""SGD with momentum and weight decay, and the detection learning-rate schedule.

torch's SGD update for each trainable parameter p with gradient g:
    d = g + weight_decay * p
    v = momentum * v + d          (v = d on the first step)
    p = p - lr * v
The schedule is torchvision's detection recipe: a linear warm-up from
``warmup_factor * lr`` to ``lr`` over ``warmup_iters`` iterations, then the rate is
multiplied by ``gamma`` at each iteration in ``milestones`` (Mask R-CNN paper §3.1:
"0.02 ... decreased by 10 at 120k iterations").
"""

from __future__ import annotations

import numpy as np

from .module import Parameter


class SGD:
    """params: Parameters, or (name, Parameter) pairs as ``named_parameters()`` yields.

    Frozen parameters (``requires_grad`` False) and those without a gradient are skipped.
    """

    def __init__(
        self,
        params,
        lr,
        momentum=0.9,
        weight_decay=1e-4,
        warmup_iters=0,
        warmup_factor=1.0 / 1000,
        milestones=(),
        gamma=0.1,
    ):
        if lr <= 0:
            raise ValueError(f"lr must be positive; got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        if not 0 <= weight_decay < float("inf"):
            raise ValueError(f"weight_decay must be a non-negative number; got {weight_decay}")
        if not 0 < gamma < float("inf"):
            raise ValueError(f"gamma must be a positive number; got {gamma}")
        if any(m < 1 for m in milestones):
            raise ValueError(f"milestones must be steps >= 1; got {tuple(milestones)}")
        self.named = []
        for i, item in enumerate(params):
            name, p = item if isinstance(item, tuple) else (str(i), item)
            if not isinstance(p, Parameter):
                raise ValueError(
                    f"SGD params must be Parameters; item {name} is {type(p).__name__}"
                )
            self.named.append((name, p))
        self.base_lr, self.momentum, self.weight_decay = float(lr), momentum, weight_decay
        self.warmup_iters, self.warmup_factor = int(warmup_iters), float(warmup_factor)
        self.milestones, self.gamma = tuple(sorted(milestones)), float(gamma)
        self.iteration = 0
        self.velocity: dict[str, np.ndarray] = {}

    def lr_at(self, iteration: int) -> float:
        """Learning rate used by the step taken at ``iteration`` (0-based)."""
        lr = self.base_lr * self.gamma ** sum(iteration >= m for m in self.milestones)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            lr *= self.warmup_factor * (1 - alpha) + alpha
        return lr

    @property
    def lr(self) -> float:
        return self.lr_at(self.iteration)

    def step(self) -> None:
        lr = self.lr
        for name, p in self.named:
            if not p.requires_grad or p.grad is None:
                continue
            d = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            if self.momentum:
                v = self.velocity.get(name)
                v = d.copy() if v is None else self.momentum * v + d
                self.velocity[name] = v
                d = v
            p.data = (p.data - lr * d).astype(p.data.dtype, copy=False)
        self.iteration += 1

    def zero_grad(self) -> None:
        for _, p in self.named:
            p.grad = None

    def state_dict(self) -> dict[str, np.ndarray]:
        """Momentum buffers ("velocity.<name>") and the iteration count, for resuming."""
        state = {f"velocity.{k}": v.copy() for k, v in self.velocity.items()}
        state["iteration"] = np.array(self.iteration, dtype=np.int64)
        return state

    def load_state_dict(self, state) -> None:
        names = {name for name, _ in self.named}
        velocity = {k[len("velocity.") :]: v for k, v in state.items() if k.startswith("velocity.")}
        unknown = sorted(set(velocity) - names)
        if unknown:
            raise ValueError(f"SGD state has velocity for unknown parameters: {', '.join(unknown)}")
        self.velocity = {k: np.array(v) for k, v in velocity.items()}
        self.iteration = int(state.get("iteration", 0))
