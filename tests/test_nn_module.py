"""Module bookkeeping (names, state_dict, modes, the saved stack), init, and SGD."""

import math

import numpy as np
import pytest

from tinymaskrcnn import nn
from tinymaskrcnn.nn import init


class Block(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, rng=rng)
        self.bn = nn.FrozenBatchNorm2d(3)
        self.heads = nn.ModuleList([nn.Sequential(nn.Conv2d(3, 1, 1, rng=rng)) for _ in range(2)])


def test_names_join_attributes_and_list_indices_as_torchvision():
    names = list(Block(np.random.default_rng(0)).state_dict())
    assert names == [
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
        "bn.running_var", "heads.0.0.weight", "heads.0.0.bias", "heads.1.0.weight",
        "heads.1.0.bias",
    ]  # fmt: skip


def test_named_parameters_leave_out_buffers():
    names = [n for n, _ in Block(np.random.default_rng(0)).named_parameters()]
    assert "bn.running_mean" not in names and "conv.weight" in names


def test_load_state_dict_round_trips():
    a, b = Block(np.random.default_rng(0)), Block(np.random.default_rng(1))
    b.load_state_dict(a.state_dict())
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_load_state_dict_lists_missing_unexpected_and_misshaped_names():
    block = Block(np.random.default_rng(0))
    state = block.state_dict()
    del state["bn.bias"]
    state["extra.weight"] = np.zeros(1)
    state["conv.bias"] = np.zeros(4)
    with pytest.raises(ValueError) as err:
        block.load_state_dict(state)
    message = str(err.value)
    assert "missing: bn.bias" in message
    assert "unexpected: extra.weight" in message
    assert "conv.bias: expected (3,), got (4,)" in message


def test_non_strict_loading_reports_what_it_skipped():
    block = Block(np.random.default_rng(0))
    state = block.state_dict()
    del state["conv.bias"]
    report = block.load_state_dict(state, strict=False)
    assert report == {"missing": ["conv.bias"], "unexpected": []}


def test_a_layer_called_twice_backpropagates_in_reverse_order():
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(2, 2, 3, padding=1, rng=rng).astype(np.float64)
    x1, x2 = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 2, 6, 5))
    g1, g2 = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 2, 6, 5))
    conv(x1)
    conv(x2)
    conv.backward(g2)
    conv.backward(g1)
    shared = conv.weight.grad.copy()
    expected = (nn.conv2d_backward(g1, x1, conv.weight.data, 1, 1)[1]
                + nn.conv2d_backward(g2, x2, conv.weight.data, 1, 1)[1])  # fmt: skip
    np.testing.assert_allclose(shared, expected)


def test_backward_without_a_training_forward_says_why():
    relu = nn.ReLU().eval()
    relu(np.ones(3))
    with pytest.raises(RuntimeError, match="training mode"):
        relu.backward(np.ones(3))


def test_no_grad_keeps_nothing_in_training_mode():
    relu = nn.ReLU()
    with nn.no_grad():
        relu(np.ones(3))
    assert relu._saved == [] and nn.grad_enabled()


def test_eval_and_train_reach_every_child():
    block = Block(np.random.default_rng(0)).eval()
    assert not any(m.training for m in block.modules())
    assert all(m.training for m in block.train().modules())


def test_astype_casts_parameters_and_float_buffers():
    block = Block(np.random.default_rng(0)).astype(np.float64)
    assert all(v.dtype == np.float64 for v in block.state_dict().values())


def test_kaiming_normal_has_the_he_standard_deviation():
    w = init.kaiming_normal((64, 32, 3, 3), np.random.default_rng(0), mode="fan_out")
    assert abs(w.std() - math.sqrt(2 / (64 * 9))) < 0.01 * math.sqrt(2 / (64 * 9)) * 5


def test_default_conv_weights_stay_within_one_over_root_fan_in():
    w = init.kaiming_uniform((8, 4, 3, 3), np.random.default_rng(0))
    assert np.abs(w).max() <= 1 / 6 + 1e-7


def test_sgd_step_with_momentum_and_weight_decay_matches_torch_by_hand():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = nn.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    p.grad = np.array([0.5, 0.5])
    opt.step()  # v = g + wd p = [0.51, 0.48]; p -= 0.1 v
    np.testing.assert_allclose(p.data, [1 - 0.051, -2 - 0.048])
    p.grad = np.array([0.5, 0.5])
    d = np.array([0.5, 0.5]) + 0.01 * p.data
    v = 0.9 * np.array([0.51, 0.48]) + d
    expected = p.data - 0.1 * v
    opt.step()
    np.testing.assert_allclose(p.data, expected)


def test_sgd_skips_frozen_parameters():
    p = nn.Parameter(np.ones(2), requires_grad=False)
    p.grad = np.ones(2)
    nn.SGD([p], lr=1.0).step()
    np.testing.assert_array_equal(p.data, 1.0)


def test_learning_rate_warms_up_linearly_then_steps_down_at_milestones():
    opt = nn.SGD([], lr=0.02, warmup_iters=100, warmup_factor=0.001, milestones=(300, 400))
    assert opt.lr_at(0) == pytest.approx(0.02 * 0.001)
    assert opt.lr_at(50) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert opt.lr_at(100) == pytest.approx(0.02)
    assert opt.lr_at(300) == pytest.approx(0.002)
    assert opt.lr_at(400) == pytest.approx(0.0002)


def test_sgd_state_round_trips_for_resuming():
    p = nn.Parameter(np.ones(2))
    opt = nn.SGD([("w", p)], lr=0.1)
    p.grad = np.ones(2)
    opt.step()
    again = nn.SGD([("w", p)], lr=0.1)
    again.load_state_dict(opt.state_dict())
    assert again.iteration == 1
    np.testing.assert_array_equal(again.velocity["w"], opt.velocity["w"])
