"""Float64 central-difference gradient checks for the layer library's explicit backwards.

For a fixed random R the loss is ``L = sum(forward(x) * R)`` (summed over every output
when forward returns a list); backward(R) must give dL/dx and add dL/dparam to each
trainable parameter's .grad, both equal to (L(v + h) - L(v - h)) / 2h entry by entry.
"""

import numpy as np

from tinymaskrcnn import nn


def numeric_grad(loss, v, h=1e-6, max_entries=None, rng=None):
    """Central differences of scalar ``loss()`` w.r.t. array ``v`` (perturbed in place).

    max_entries: check that many randomly chosen entries (None: every entry).
    Returns (flat indices, gradients).
    """
    flat = v.reshape(-1)
    idx = np.arange(flat.size)
    if max_entries is not None and flat.size > max_entries:
        idx = np.sort((rng or np.random.default_rng(0)).choice(flat.size, max_entries, False))
    grads = np.empty(len(idx))
    for k, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + h
        up = loss()
        flat[i] = old - h
        down = loss()
        flat[i] = old
        grads[k] = (up - down) / (2 * h)
    return idx, grads


def check_module_gradients(module, x, rng, max_entries=None, rtol=1e-6, atol=1e-8):
    """Assert that ``module.backward`` matches central differences for input(s) and params.

    module: a float64 module in training mode. x: a float64 array, or a list of arrays
    when forward takes a list (the FPN).
    """
    is_list_in = isinstance(x, list)
    module.forget()
    out = module(x)
    outs = out if isinstance(out, list) else [out]
    weights = [rng.standard_normal(o.shape) for o in outs]
    module.zero_grad()
    grad = module.backward(weights if isinstance(out, list) else weights[0])
    assert not any(m._saved for m in module.modules()), "backward left saved tensors behind"

    def loss():
        with nn.no_grad():
            y = module(x)
        ys = y if isinstance(y, list) else [y]
        return sum(float((a * w).sum()) for a, w in zip(ys, weights, strict=True))

    def compare(analytic, v, what):
        idx, num = numeric_grad(loss, v, max_entries=max_entries, rng=rng)
        scale = max(np.abs(num).max(), 1.0)
        np.testing.assert_allclose(
            analytic.reshape(-1)[idx], num, rtol=rtol, atol=atol * scale, err_msg=what
        )

    if grad is not None:
        xs, grads = (x, grad) if is_list_in else ([x], [grad])
        for i, (xi, gi) in enumerate(zip(xs, grads, strict=True)):
            compare(gi, xi, f"input {i}")
    checked = 0
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            compare(p.grad, p.data, name)
            checked += 1
    return checked
