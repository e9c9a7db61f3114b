"""Float64 central-difference gradient checks, shared by every test of a backward.

``central_difference`` estimates one entry of dL/dv as (L(v + h) - L(v - h)) / 2h,
perturbing v in place; ``numerical_grad`` does so for every entry of v. For the layer
library, ``check_module_gradients`` fixes a random R, takes ``L = sum(forward(x) * R)``
(summed over every output when forward returns a list), and asserts that backward(R)
gives dL/dx and adds dL/dparam to each trainable parameter's .grad.
"""

import numpy as np

from tinymaskrcnn import nn


def central_difference(loss, v, i, h=1e-6):
    """d loss() / d v.flat[i] by central differences; v is perturbed in place, then restored.

    loss: a function of no arguments reading v. v: a float64 array whose reshape(-1) is
    a view. Returns the estimate as a float.
    """
    flat = v.reshape(-1)
    old = flat[i]
    flat[i] = old + h
    up = loss()
    flat[i] = old - h
    down = loss()
    flat[i] = old
    return (up - down) / (2 * h)


def numerical_grad(loss, v, h=1e-6):
    """Central differences of scalar ``loss()`` at every entry of ``v``; shaped like v."""
    grad = np.zeros(v.shape, v.dtype)
    flat = grad.reshape(-1)
    for i in range(flat.size):
        flat[i] = central_difference(loss, v, i, h)
    return grad


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
        # max_entries: check that many randomly chosen entries (None: every entry).
        idx = np.arange(v.size)
        if max_entries is not None and v.size > max_entries:
            idx = np.sort(rng.choice(v.size, max_entries, False))
        num = np.array([central_difference(loss, v, i) for i in idx])
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
