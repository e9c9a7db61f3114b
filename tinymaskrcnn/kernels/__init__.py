"""The one dispatch point between the NumPy reference and the fast kernels
(docs/architecture.md, Backends and dispatch).

Every stage module computes with plain NumPy. An op that also has a fast version asks
this module for it by the op's reference name::

    fast = kernels.implementation("box_iou")
    if fast is not None:
        return fast(boxes1, boxes2)
    ...the reference...

and never looks at which backend is active. A kernel that speeds up only some inputs
(the numba ``conv2d``: 3x3 stride-1 convolutions) returns None for the others, and the
stage then runs its reference. Kernels are leaves: the stage validates
the inputs and computes what is stage logic (NMS's score order, RoIAlign's per-RoI
geometry, RoIPool's bins) once, and hands the kernel those arrays; no module in this
package imports a stage module or another backend's module. The kernels live beside
this file, one module per stage and backend (``numba_boxes.py``, ``cuda_boxes.py``,
...), and are imported on first use, so ``import tinymaskrcnn`` does not pay for
Numba's start-up.

Backends:
    "numpy"  the reference (default); always available.
    "numba"  Numba CPU kernels, ``@njit(parallel=True, cache=True)``.
    "cuda"   Numba CUDA kernels; needs ``numba-cuda`` (``pip install tinymaskrcnn[cuda]``)
             and a GPU, or Numba's simulator (``NUMBA_ENABLE_CUDASIM=1``).

Choose one with ``use_backend("numba")`` (also usable as a ``with`` block) or the
environment variable ``TINYMASKRCNN_BACKEND``.

Every copy between host and GPU is made by ``to_device`` or ``to_host``, and
``count_transfers()`` counts them (docs/architecture.md, Backends and dispatch).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Callable

import numpy as np

BACKENDS = ("numpy", "numba", "cuda")

# op name -> {backend: "module.function"} relative to this package. An op missing
# here, or missing a backend, runs the reference under that backend.
_REGISTRY: dict[str, dict[str, str]] = {
    # boxes.py
    "box_iou": {"numba": "numba_boxes.box_iou", "cuda": "cuda_boxes.box_iou"},
    "box_decode": {"numba": "numba_boxes.box_decode", "cuda": "cuda_boxes.box_decode"},
    "nms": {"numba": "numba_boxes.nms", "cuda": "cuda_boxes.nms"},
    "batched_nms": {"numba": "numba_boxes.batched_nms", "cuda": "cuda_boxes.batched_nms"},
    # roi_ops/
    "roi_align": {"numba": "numba_roi_ops.roi_align", "cuda": "cuda_roi_ops.roi_align"},
    "roi_align_backward": {
        "numba": "numba_roi_ops.roi_align_backward",
        "cuda": "cuda_roi_ops.roi_align_backward",
    },
    "roi_pool": {"numba": "numba_roi_ops.roi_pool", "cuda": "cuda_roi_ops.roi_pool"},
    "roi_pool_backward": {
        "numba": "numba_roi_ops.roi_pool_backward",
        "cuda": "cuda_roi_ops.roi_pool_backward",
    },
    # roi_ops/pyramid.py; device arrays only
    "place_rows": {"cuda": "cuda_roi_ops.place_rows"},
    # nn/im2col.py, nn/conv.py
    "im2col": {"numba": "numba_conv.im2col"},
    "col2im": {"numba": "numba_conv.col2im"},
    "conv2d": {"numba": "numba_conv.conv2d", "cuda": "cuda_conv.conv2d"},
    "conv2d_backward": {"cuda": "cuda_conv.conv2d_backward"},
    "conv2d_weight_grad": {"numba": "numba_conv.conv2d_weight_grad"},
    # nn/conv_transpose.py and nn/layers.py Linear; the CUDA kernels take device arrays only
    "conv_transpose2d": {
        "numba": "numba_conv.conv_transpose2d",
        "cuda": "cuda_conv.conv_transpose2d",
    },
    "linear": {"cuda": "cuda_conv.linear"},
    # nn/layers.py; the CUDA kernels take device arrays only (cuda_layers.py)
    "bias_add_relu_": {
        "numba": "numba_layers.bias_add_relu_",
        "cuda": "cuda_layers.bias_add_relu_",
    },
    "relu": {"numba": "numba_layers.relu", "cuda": "cuda_layers.relu"},
    "relu_with_mask": {"numba": "numba_layers.relu_with_mask"},
    "relu_backward": {"numba": "numba_layers.relu_backward"},
    "max_pool2d": {"numba": "numba_layers.max_pool2d", "cuda": "cuda_layers.max_pool2d"},
    # fpn.py
    "add_top_down": {"cuda": "cuda_layers.add_top_down"},
}

_ENV_VAR = "TINYMASKRCNN_BACKEND"


def _check_name(name: str, what: str = "backend") -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def _initial_backend() -> str:
    name = os.environ.get(_ENV_VAR, "numpy").strip().lower() or "numpy"
    if name not in BACKENDS:
        raise ValueError(
            f"environment variable {_ENV_VAR}={name!r} names no backend; "
            f"expected one of {', '.join(BACKENDS)} (or unset it for 'numpy')"
        )
    return name


_DEFAULT_BACKEND = _initial_backend()
_active: contextvars.ContextVar[str] = contextvars.ContextVar(
    "tinymaskrcnn_backend", default=_DEFAULT_BACKEND
)
_available_cache: dict[str, bool] = {}
_loaded: dict[str, Callable] = {}


def _backend_available(name: str) -> bool:
    if name == "numpy":
        return True
    if name not in _available_cache:
        try:
            if name == "numba":
                import numba  # noqa: F401

                ok = True
            else:
                from numba import cuda

                ok = bool(cuda.is_available())
        except Exception:  # ImportError, or a CUDA driver that fails to initialise
            ok = False
        _available_cache[name] = ok
    return _available_cache[name]


def available_backends() -> list[str]:
    """The backends that can run here, in order of preference for speed last."""
    return [b for b in BACKENDS if _backend_available(b)]


def get_backend() -> str:
    """The name of the active backend."""
    return _active.get()


class use_backend:
    """Switch backend: ``use_backend("numba")`` sets it; as a ``with`` block it is restored.

    Raises ValueError for an unknown name and RuntimeError for a backend that cannot
    run on this machine (with what to install).
    """

    def __init__(self, name: str):
        name = _check_name(str(name).lower())
        if not _backend_available(name):
            hint = (
                "install Numba (pip install numba)"
                if name == "numba"
                else "install numba-cuda (pip install 'tinymaskrcnn[cuda]') on a machine with "
                "an NVIDIA GPU, or set NUMBA_ENABLE_CUDASIM=1 before importing numba to use "
                "Numba's simulator"
            )
            raise RuntimeError(f"backend {name!r} is not available here: {hint}")
        self.name = name
        self._token = _active.set(name)

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *exc) -> None:
        _active.reset(self._token)


def _load(path: str) -> Callable:
    if path not in _loaded:
        # Numba's OpenMP workers spin for a while after every parallel kernel; with few
        # cores that steals the CPU from the BLAS threads of the convolution's next
        # matrix product (a backbone training step measured 10x slower on 2 cores).
        # Waiting passively costs nothing measurable. OpenMP reads this when Numba first
        # launches a parallel kernel, so it is set before any kernel module loads (a
        # user's own value wins; if torch loaded libgomp first, its settings stand).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        module_name, func_name = path.rsplit(".", 1)
        module = importlib.import_module(f"{__name__}.{module_name}")
        _loaded[path] = getattr(module, func_name)
    return _loaded[path]


def kernel(op: str, backend: str) -> Callable | None:
    """The kernel registered for ``op`` under ``backend``, or None when it runs the reference."""
    _check_name(backend)
    path = _REGISTRY.get(op, {}).get(backend)
    return None if path is None else _load(path)


def implementation(op: str) -> Callable | None:
    """The kernel for ``op`` under the active backend, or None: run the NumPy reference."""
    if op not in _REGISTRY:
        raise KeyError(f"op {op!r} is not registered in tinymaskrcnn.kernels._REGISTRY")
    backend = _active.get()
    return None if backend == "numpy" else kernel(op, backend)


def implementations() -> dict[str, dict[str, str]]:
    """Table op -> backend -> kernel name ("reference" where the NumPy code runs)."""
    return {
        op: {b: ("reference" if b == "numpy" else table.get(b, "reference")) for b in BACKENDS}
        for op, table in sorted(_REGISTRY.items())
    }


def is_device_array(x) -> bool:
    """True for a GPU array (Numba device array or anything with __cuda_array_interface__)."""
    # Numba's simulator stands in FakeCUDAArray for device arrays; it has no interface.
    return hasattr(x, "__cuda_array_interface__") or type(x).__name__ == "FakeCUDAArray"


class Transfers:
    """Host <-> device copies seen by ``count_transfers``: how many, and their bytes."""

    def __init__(self):
        self.to_device = 0
        self.to_host = 0
        self.bytes_to_device = 0
        self.bytes_to_host = 0

    @property
    def total(self) -> int:
        return self.to_device + self.to_host

    def __repr__(self) -> str:
        return (
            f"Transfers(to_device={self.to_device} ({self.bytes_to_device} B), "
            f"to_host={self.to_host} ({self.bytes_to_host} B))"
        )


_counters: list[Transfers] = []


@contextlib.contextmanager
def count_transfers():
    """Count every copy between host and GPU made inside the block::

        with kernels.count_transfers() as copies:
            model([image])
        copies.to_device, copies.to_host, copies.total

    Every copy the CUDA kernels and the stages make goes through ``to_device`` and
    ``to_host``, which is where they are counted; blocks may nest (each counts all).
    """
    counter = Transfers()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def to_host(x):
    """``x`` as a NumPy array: a device array is copied to the host, anything else as is."""
    if not is_device_array(x):
        return x
    host = x.copy_to_host()
    for counter in _counters:
        counter.to_host += 1
        counter.bytes_to_host += host.nbytes
    return host


def to_device(x, dtype=None):
    """``x`` as a CUDA device array (copied from the host unless it is one already).

    dtype: the dtype the kernel needs, or None to keep ``x``'s; a device array of another
    dtype is an error (converting it would need a device-side copy the caller should see).
    """
    from numba import cuda

    if is_device_array(x):
        if dtype is not None and np.dtype(x.dtype) != np.dtype(dtype):
            raise ValueError(f"device array of dtype {x.dtype} where {np.dtype(dtype)} is needed")
        return x
    host = np.ascontiguousarray(x, dtype=dtype)
    for counter in _counters:
        counter.to_device += 1
        counter.bytes_to_device += host.nbytes
    return cuda.to_device(host)


def resident(x):
    """``x`` where the active backend keeps feature maps: a device array under "cuda"
    (copied there unless it is one), ``x`` itself under "numpy" and "numba".

    The model hands the backbone its image through this in inference, so that under
    "cuda" the maps pass from kernel to kernel on the GPU (docs/architecture.md, Backends
    and dispatch); the stages bring back with ``to_host`` what NumPy code reads.
    """
    return to_device(x) if _active.get() == "cuda" else x


class DeviceCopy:
    """A value the kernels read many times, copied to the GPU once per value
    (docs/architecture.md, Backends and dispatch): a layer's weight, a convolution's
    folded with its batch norm.

    ``get(make, sources, key)``: under "cuda", the device copy of ``make()`` (a host
    array, or a tuple of them, computed from the host arrays ``sources``), made again
    only when a source is another array object than last time or ``key`` (the dtype)
    differs; under the other backends ``make()`` itself, as before. Every update the
    package makes assigns a new array (SGD, ``load_state_dict``, ``astype``, batch
    norm's running statistics), which makes a new copy. An in-place write would go
    unseen, so the sources are made read-only once copied: change such a value by
    assigning a new array (``p.data = new``).
    """

    def __init__(self):
        self._sources: tuple = ()
        self._key = None
        self._copy = None

    def get(self, make, sources, key=None):
        if _active.get() != "cuda":
            return make()
        stale = (
            self._copy is None
            or self._key != key
            or len(sources) != len(self._sources)
            or any(a is not b for a, b in zip(sources, self._sources, strict=True))
        )
        if stale:
            value = make()
            if isinstance(value, tuple):
                self._copy = tuple(to_device(v) for v in value)
            else:
                self._copy = to_device(value)
            for source in sources:
                source.flags.writeable = False
            self._sources, self._key = tuple(sources), key
        return self._copy

    def __getstate__(self):  # a device copy does not travel (pickle, deepcopy, Ray)
        return {}

    def __setstate__(self, state):
        self.__init__()


__all__ = [
    "BACKENDS",
    "DeviceCopy",
    "Transfers",
    "available_backends",
    "count_transfers",
    "get_backend",
    "implementation",
    "implementations",
    "is_device_array",
    "kernel",
    "resident",
    "to_device",
    "to_host",
    "use_backend",
]
