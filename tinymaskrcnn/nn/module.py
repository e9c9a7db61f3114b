"""Module and Parameter: the bookkeeping under every layer (no autograd, explicit backward).

A ``Module`` owns ``Parameter``s (trainable arrays with a ``.grad``), buffers (arrays
that are state but not trained: batch-norm statistics) and child modules. Names are
built from attribute names joined by dots, with integer names for the children of a
``Sequential`` / ``ModuleList`` -- exactly torchvision's ``state_dict`` names, so that
``layer1.0.conv1.weight`` here is ``layer1.0.conv1.weight`` there.

How forward and backward meet (the one rule every layer follows):

* ``module(x)`` calls ``forward(x)``. In training mode (``train()``, the default) and
  outside ``no_grad()``, forward pushes what its backward needs onto the module's own
  stack (``self._save(...)``).
* ``backward(grad_out)`` pops the most recent entry, returns ``grad_in`` and *adds* to
  the ``.grad`` of its parameters that require gradients.

So a layer may be called several times before backward -- the RPN head runs once per
pyramid level -- as long as the backwards come in reverse order of the forwards
(last in, first out), as the chain rule visits them anyway. In eval mode or under
``no_grad()`` nothing is kept: inference memory is only the live activations.
``forget()`` drops anything kept (a forward whose backward never ran).

``load_state_dict`` accepts both generations of torchvision's key names
(``KEY_RENAMES``); ``state_dict`` always writes the current one.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator

import numpy as np

from .. import kernels

_grad_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tinymaskrcnn_grad_enabled", default=True
)


@contextlib.contextmanager
def no_grad():
    """Within this block forwards keep nothing for backward (inference, frozen stages)."""
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


def grad_enabled() -> bool:
    """False inside ``no_grad()``."""
    return _grad_enabled.get()


class Parameter:
    """A trainable array.

    data: ndarray, the value (float32 for models; float64 in gradient checks). Under the
        cuda backend its layer keeps a device copy of it (``kernels.DeviceCopy``);
        the array is then read-only: assign a new one (``p.data = new``) to change it.
    grad: ndarray of data's shape, or None before the first backward; backward adds to it.
    requires_grad: False freezes it: backward leaves ``grad`` alone, SGD skips it.
    """

    def __init__(self, data, requires_grad: bool = True):
        self.data = np.asarray(data)
        self.grad = None
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def accumulate(self, grad) -> None:
        """Add ``grad`` (same shape as data) to ``.grad``; a frozen parameter ignores it."""
        if not self.requires_grad:
            return
        grad = kernels.to_host(grad)  # the cuda backend's gradients may live on the GPU
        if self.grad is None:
            self.grad = np.array(grad, dtype=self.data.dtype, copy=True)
        else:
            self.grad += grad

    def __repr__(self) -> str:
        frozen = "" if self.requires_grad else ", frozen"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{frozen})"


def kernel_parameters(layer, dtype):
    """(weight, bias or None) of ``layer`` (Conv2d, ConvTranspose2d, Linear) in ``dtype``,
    where its kernel reads them: under "cuda" device copies made once per value
    (``layer.kernel_weights``, a ``kernels.DeviceCopy``); elsewhere the host arrays as
    they are (the functional forms cast them), with nothing built on the CPU's hot path."""
    if kernels.get_backend() != "cuda":
        return layer.weight.data, (None if layer.bias is None else layer.bias.data)
    params = [layer.weight] + ([] if layer.bias is None else [layer.bias])
    dtype = np.dtype(dtype)
    weight, *bias = layer.kernel_weights.get(
        lambda: tuple(p.data.astype(dtype, copy=False) for p in params),
        [p.data for p in params],
        dtype,
    )
    return weight, (bias[0] if bias else None)


# --- torchvision's state-dict key generations ---------------------------------------

# The one table of torchvision's renames (0.13 wrapped these convolutions in
# Conv2dNormActivation and the mask head's in a Sequential): old spelling -> current,
# matched at the end of a key, whatever module path comes before it.
KEY_RENAMES = (
    (re.compile(r"(^|\.)(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$"), r"\1\2.\3.0.\4"),
    (re.compile(r"(^|\.)conv\.(weight|bias)$"), r"\1conv.0.0.\2"),  # the RPN head's 3x3 conv
    (
        re.compile(r"(^|\.)mask_fcn(\d+)\.(weight|bias)$"),
        lambda m: f"{m[1]}{int(m[2]) - 1}.0.{m[3]}",  # mask_fcn1 is block 0
    ),
)


def new_key(name: str) -> str:
    """A key of either torchvision generation, in the current generation's spelling."""
    for pattern, replacement in KEY_RENAMES:
        if pattern.search(name):
            return pattern.sub(replacement, name)
    return name


def upgrade_state_dict(state: dict, expected=None) -> dict:
    """The one way a state dict reaches a model: old keys renamed, unused counters dropped.

    state: name -> array. expected: the names the receiving module has, or None.
    With ``expected``, a key is renamed only when its current spelling is expected
    (so the table never touches a name that is right as it is), and BatchNorm's
    ``num_batches_tracked`` step counters the module has no place for are dropped:
    frozen batch norm keeps none, and a step count is bookkeeping, not a weight
    (torchvision's FrozenBatchNorm2d drops it too). Without it, every old key is renamed.
    Raises ValueError when two keys map to the same name (a file mixing generations).
    """
    out = {}
    for name, value in state.items():
        if expected is not None and name.endswith("num_batches_tracked") and name not in expected:
            continue
        key = name
        if expected is None or name not in expected:
            renamed = new_key(name)
            key = renamed if expected is None or renamed in expected else name
        if key in out:
            raise ValueError(f"state_dict holds both {name!r} and another spelling of {key!r}")
        out[key] = value
    return out


class Module:
    """Base class: parameters, buffers, children, train/eval, state_dict, the saved stack."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_saved", [])
        object.__setattr__(self, "training", True)

    # -- registration: assigning a Parameter or a Module to an attribute registers it --
    def __setattr__(self, name, value):
        if "_modules" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__()")
        if name in self._buffers:  # replacing a buffer's value keeps it a buffer
            object.__setattr__(self, name, np.asarray(value))
            return
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value) -> None:
        """A state array that is saved and loaded but never trained (e.g. running_mean)."""
        object.__setattr__(self, name, np.asarray(value))
        self._buffers[name] = True

    # -- calling --
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, grad_out):
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def _keeps(self) -> bool:
        return self.training and grad_enabled()

    def _save(self, *items) -> None:
        """Push what backward needs (only in training mode, outside no_grad)."""
        if self._keeps():
            self._saved.append(items)

    def _pop(self):
        """Pop what the matching forward kept; a clear error when there is none."""
        if not self._saved:
            raise RuntimeError(
                f"{type(self).__name__}.backward has no forward to match: forward must run "
                "in training mode (module.train()) outside no_grad(), once per backward"
            )
        items = self._saved.pop()
        return items[0] if len(items) == 1 else items

    def forget(self) -> None:
        """Drop everything kept for backward, in this module and all below it."""
        for module in self.modules():
            module._saved.clear()

    # -- modes --
    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, flag: bool = True) -> Module:
        """Freeze (False) or unfreeze (True) every parameter of this module and below."""
        for p in self.parameters():
            p.requires_grad = bool(flag)
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def astype(self, dtype) -> Module:
        """Cast every parameter and floating buffer (float64 for gradient checks)."""
        for module in self.modules():
            for p in module._parameters.values():
                p.data = p.data.astype(dtype)
                p.grad = None
            for name in module._buffers:
                value = getattr(module, name)
                if np.issubdtype(value.dtype, np.floating):
                    object.__setattr__(module, name, value.astype(dtype))
        return self

    # -- traversal, in registration order (torchvision's order) --
    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for path, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                yield (f"{path}.{name}" if path else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for path, module in self.named_modules(prefix):
            for name in module._buffers:
                yield (f"{path}.{name}" if path else name), getattr(module, name)

    # -- state --
    def state_dict(self) -> dict[str, np.ndarray]:
        """name -> array for every parameter and buffer (torchvision's names; copies)."""
        state = {}
        for path, module in self.named_modules():
            for name, p in module._parameters.items():
                state[f"{path}.{name}" if path else name] = p.data.copy()
            for name in module._buffers:
                state[f"{path}.{name}" if path else name] = getattr(module, name).copy()
        return state

    def load_state_dict(self, state, strict: bool = True) -> dict[str, list[str]]:
        """Copy arrays from ``state`` (name -> array) into parameters and buffers.

        Values keep this module's dtype. Raises ValueError listing every missing,
        unexpected (when ``strict``) and mis-shaped name. Returns the lists
        ``{"missing": [...], "unexpected": [...]}`` (empty when strict succeeded).
        """
        targets = {}
        for path, module in self.named_modules():
            for name in list(module._parameters) + list(module._buffers):
                targets[f"{path}.{name}" if path else name] = (module, name)
        # torchvision's older key spellings renamed, unused step counters dropped.
        state = upgrade_state_dict({str(k): v for k, v in dict(state).items()}, set(targets))
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        misshaped = []
        for key in sorted(set(targets) & set(state)):
            module, name = targets[key]
            have = _current(module, name).shape
            got = np.shape(state[key])
            if tuple(have) != tuple(got):
                misshaped.append(f"{key}: expected {tuple(have)}, got {tuple(got)}")
        problems = []
        if misshaped:
            problems.append("mis-shaped: " + "; ".join(misshaped))
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected: " + ", ".join(unexpected))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + " | ".join(problems))
        for key in sorted(set(targets) & set(state)):
            module, name = targets[key]
            current = _current(module, name)
            value = np.array(state[key], dtype=current.dtype, copy=True)
            if name in module._parameters:
                module._parameters[name].data = value
            else:
                object.__setattr__(module, name, value)
        return {"missing": missing, "unexpected": unexpected}

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_lines = repr(child).split("\n")
            lines.append(f"  ({name}): " + "\n  ".join(child_lines))
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def _current(module: Module, name: str) -> np.ndarray:
    if name in module._parameters:
        return module._parameters[name].data
    return getattr(module, name)


class _NumberedChildren(Module):
    """Children named "0", "1", ... in order: length, indexing and iteration over them."""

    def __init__(self, modules=()):
        super().__init__()
        for i, module in enumerate(modules):
            setattr(self, str(i), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Sequential(_NumberedChildren):
    """Children named "0", "1", ...; forward chains them, backward runs them in reverse."""

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def backward(self, grad_out):
        for module in reversed(self._modules.values()):
            grad_out = module.backward(grad_out)
        return grad_out


class ModuleList(_NumberedChildren):
    """A list of children named "0", "1", ... (no forward of its own)."""

    def append(self, module: Module) -> None:
        setattr(self, str(len(self._modules)), module)
