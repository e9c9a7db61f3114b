"""Weight initialisation (He et al., 2015, "Delving Deep into Rectifiers").

Every function takes the array's shape and an explicit ``np.random.Generator`` and
returns a new array; nothing reads global random state. Fans follow torch's rule for
an array of shape (d0, d1, *receptive): ``fan_in = d1 * prod(receptive)``,
``fan_out = d0 * prod(receptive)`` -- for a convolution weight (O, C/groups, kh, kw)
that is the number of inputs and outputs one weight touches.
"""

from __future__ import annotations

import math

import numpy as np

_SQRT5 = math.sqrt(5.0)


def generator(rng=None) -> np.random.Generator:
    """``rng`` itself, or for None a generator seeded with 0.

    Layers built without a generator thus get the same weights on every run: nothing in
    the package draws from an unseeded source. Pass your own to get other draws.
    """
    if rng is None:
        return np.random.default_rng(0)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a np.random.Generator (or None); got {type(rng).__name__}")
    return rng


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of ``shape`` (at least 2-D)."""
    if len(shape) < 2:
        raise ValueError(f"fans need a weight of at least 2 dimensions; got shape {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def _gain(nonlinearity: str, a: float) -> float:
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1.0 + a * a))
    if nonlinearity == "linear":
        return 1.0
    raise ValueError(f"nonlinearity must be 'relu', 'leaky_relu' or 'linear'; got {nonlinearity!r}")


def _fan(shape, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out'; got {mode!r}")
    fan_in, fan_out = fans(shape)
    return fan_in if mode == "fan_in" else fan_out


def kaiming_normal(shape, rng, mode="fan_out", nonlinearity="relu", a=0.0, dtype=np.float32):
    """N(0, gain^2 / fan): torchvision's ResNet initialises its convolutions this way."""
    std = _gain(nonlinearity, a) / math.sqrt(max(_fan(shape, mode), 1))
    return (rng.standard_normal(shape) * std).astype(dtype)


def kaiming_uniform(
    shape, rng, a=_SQRT5, mode="fan_in", nonlinearity="leaky_relu", dtype=np.float32
):
    """U(-b, b), b = gain * sqrt(3 / fan). With a=sqrt(5) this is torch's default for
    Conv2d/Linear weights (b = 1/sqrt(fan_in)); the FPN uses a=1."""
    bound = _gain(nonlinearity, a) * math.sqrt(3.0 / max(_fan(shape, mode), 1))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def uniform_bias(shape, fan_in: int, rng, dtype=np.float32):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default bias of Conv2d/Linear."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def normal(shape, rng, std=0.01, mean=0.0, dtype=np.float32):
    """N(mean, std^2): the RPN and box/mask predictors start from std 0.01 / 0.001."""
    return (rng.standard_normal(shape) * std + mean).astype(dtype)


def constant(shape, value, dtype=np.float32):
    """Every entry ``value`` (biases 0, batch-norm weights 1)."""
    return np.full(shape, value, dtype=dtype)
