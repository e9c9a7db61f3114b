import pickle

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from gradcheck import numerical_grad
from hypothesis import given
from hypothesis import strategies as st

from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.matching import Matcher
from tinymaskrcnn.rpn import (
    RPNHead,
    anchor_targets,
    flatten_predictions,
    rpn_losses,
    select_proposals,
    top_n_per_level,
    unflatten_gradients,
)

CFG = MaskRCNNConfig.shapes(rpn_post_nms_top_n_test=10, rpn_pre_nms_top_n_test=15)


def grid_anchors(n=6, size=16.0):
    """n x n anchors of side ``size`` on a 16-pixel grid (a 96 x 96 image for n = 6)."""
    ys, xs = np.mgrid[0:n, 0:n] * 16.0
    return np.stack([xs, ys, xs + size, ys + size], -1).reshape(-1, 4)


# --- anchor order ---------------------------------------------------------------------


def test_flattening_puts_the_anchors_of_one_cell_together_row_by_row():
    a, h, w = 3, 2, 4
    obj = np.zeros((1, a, h, w))
    for k in range(a):
        obj[0, k] = 100 * np.arange(h)[:, None] + 10 * np.arange(w)[None, :] + k
    deltas = np.repeat(obj, 4, axis=1).reshape(1, a, 4, h, w)
    deltas[:, :, 1] += 0.5  # the y delta of each anchor, to check the inner order
    flat_obj, flat_del = flatten_predictions([obj], [deltas.reshape(1, 4 * a, h, w)])
    expected = [100 * y + 10 * x + k for y in range(h) for x in range(w) for k in range(a)]
    np.testing.assert_array_equal(flat_obj[0], expected)
    np.testing.assert_array_equal(flat_del[0, :, 0], expected)
    np.testing.assert_array_equal(flat_del[0, :, 1], np.array(expected) + 0.5)


def test_unflatten_inverts_flatten_over_several_levels():
    rng = np.random.default_rng(0)
    objs = [rng.normal(size=(2, 3, h, w)) for h, w in [(4, 5), (2, 3), (1, 1)]]
    dels = [rng.normal(size=(2, 12, h, w)) for h, w in [(4, 5), (2, 3), (1, 1)]]
    flat_obj, flat_del = flatten_predictions(objs, dels)
    back_obj, back_del = unflatten_gradients(flat_obj, flat_del, [o.shape for o in objs])
    for a, b in zip(objs + dels, back_obj + back_del, strict=True):
        np.testing.assert_array_equal(a, b)


def test_top_n_is_taken_within_each_level():
    objectness = np.array([0.1, 0.9, 0.5, 3.0, 2.0, -1.0, 7.0])
    np.testing.assert_array_equal(top_n_per_level(objectness, [3, 4], 2), [1, 2, 6, 3])
    np.testing.assert_array_equal(top_n_per_level(objectness, [3, 4], 10), [1, 2, 0, 6, 3, 4, 5])


# --- anchor targets -------------------------------------------------------------------


def test_with_no_objects_every_anchor_is_background():
    labels, _ = anchor_targets(grid_anchors(), np.zeros((0, 4)), Matcher(0.7, 0.3, True))
    assert labels.shape == (36,) and np.all(labels == 0)


def test_anchor_labels_follow_the_07_03_thresholds():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 16], [40, 40, 50, 50], [0, 0, 10, 30.0]])
    gt = np.array([[0, 0, 10, 10.0]])
    labels, matched = anchor_targets(anchors, gt, Matcher(0.7, 0.3, True))
    # IoU 1 -> 1; 0.625 -> ignored; 0 -> background; 1/3 -> ignored
    np.testing.assert_array_equal(labels, [1, -1, 0, -1])
    np.testing.assert_array_equal(matched, 0)


# --- proposals ------------------------------------------------------------------------


@given(
    objectness=hnp.arrays(np.float64, 36, elements=st.floats(-8, 8)),
    deltas=hnp.arrays(np.float64, (36, 4), elements=st.floats(-3, 3)),
)
def test_proposals_are_inside_the_image_sorted_and_at_most_post_nms_top_n(objectness, deltas):
    boxes, scores = select_proposals(
        objectness, deltas, grid_anchors(), [24, 12], (90, 80), CFG, training=False
    )
    assert len(boxes) <= CFG.rpn_post_nms_top_n_test and len(boxes) == len(scores)
    assert np.all(boxes[:, [0, 2]] >= 0) and np.all(boxes[:, [0, 2]] <= 80)
    assert np.all(boxes[:, [1, 3]] >= 0) and np.all(boxes[:, [1, 3]] <= 90)
    assert np.all(np.diff(scores) <= 0) and np.all((scores >= 0) & (scores <= 1))


def test_zero_deltas_propose_the_anchors_themselves():
    anchors = grid_anchors(2)
    objectness = np.array([3.0, 2.0, 1.0, 0.0])
    boxes, scores = select_proposals(
        objectness, np.zeros((4, 4)), anchors, [4], (100, 100), CFG, training=False
    )
    np.testing.assert_allclose(boxes, anchors)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-objectness)))


# --- losses and their gradients -------------------------------------------------------


@pytest.mark.parametrize("num_gt", [0, 1, 3])
def test_rpn_loss_gradients_match_central_differences(num_gt):
    rng = np.random.default_rng(num_gt)
    anchors = grid_anchors()
    gt = anchors[rng.choice(36, num_gt, replace=False)] + rng.uniform(-3, 3, (num_gt, 4))
    objectness = rng.normal(size=(1, 36))
    deltas = rng.normal(0, 0.2, size=(1, 36, 4))
    cfg = MaskRCNNConfig.shapes(rpn_batch_size_per_image=16)
    targets = [{"boxes": gt}]

    def total():
        losses = rpn_losses(objectness, deltas, anchors, targets, cfg, np.random.default_rng(5))[0]
        return sum(losses.values())

    _, g_obj, g_del, _ = rpn_losses(
        objectness, deltas, anchors, targets, cfg, np.random.default_rng(5)
    )
    np.testing.assert_allclose(g_obj, numerical_grad(total, objectness), atol=1e-7)
    np.testing.assert_allclose(g_del, numerical_grad(total, deltas), atol=1e-7)
    if num_gt == 0:
        assert np.all(g_del == 0)


def test_rpn_head_backward_matches_central_differences():
    rng = np.random.default_rng(0)
    head = RPNHead(4, 3, rng=rng).astype(np.float64)
    for p in head.parameters():
        p.data = rng.normal(0, 0.5, p.shape)
    features = [rng.normal(size=(1, 4, 3, 4)), rng.normal(size=(1, 4, 2, 2))]
    weights_obj = [rng.normal(size=(1, 3, 3, 4)), rng.normal(size=(1, 3, 2, 2))]
    weights_del = [rng.normal(size=(1, 12, 3, 4)), rng.normal(size=(1, 12, 2, 2))]

    def loss():
        obj, dl = head(features)
        head.forget()
        return sum((o * w).sum() for o, w in zip(obj, weights_obj, strict=True)) + sum(
            (d * w).sum() for d, w in zip(dl, weights_del, strict=True)
        )

    head.zero_grad()
    head(features)
    grads = head.backward(weights_obj, weights_del)
    for f, g in zip(features, grads, strict=True):
        np.testing.assert_allclose(g, numerical_grad(loss, f), atol=1e-7)
    conv = head.conv[0][0].weight
    np.testing.assert_allclose(conv.grad, numerical_grad(loss, conv.data), atol=1e-6)


def test_rpn_head_loads_the_old_conv_key():
    head = RPNHead(4, 3, rng=np.random.default_rng(0))
    state = head.state_dict()
    state["conv.weight"] = state.pop("conv.0.0.weight") + 1
    state["conv.bias"] = state.pop("conv.0.0.bias")
    head.load_state_dict(state)
    np.testing.assert_array_equal(head.conv[0][0].weight.data, state["conv.weight"])


def test_the_rpn_keeps_its_anchors_only_while_generator_and_sizes_stay_the_same():
    from tinymaskrcnn.anchors import AnchorGenerator
    from tinymaskrcnn.rpn import RegionProposalNetwork

    rpn = RegionProposalNetwork(CFG, 4, rng=np.random.default_rng(0))
    maps = [np.zeros((1, 4, s, s), np.float32) for s in (16, 8, 4, 2, 1)]

    def fresh(generator, padded, features):
        sizes = [f.shape[2:] for f in features]
        return np.concatenate(generator.generate(padded, sizes)).astype(features[0].dtype)

    anchors, per_level, strides = rpn._anchors((64, 64), maps)
    np.testing.assert_array_equal(anchors, fresh(rpn.anchor_generator, (64, 64), maps))
    assert per_level == [3 * s * s for s in (16, 8, 4, 2, 1)]
    assert strides == rpn.anchor_generator.strides((64, 64), [m.shape[2:] for m in maps])
    with pytest.raises(ValueError, match="read-only"):
        anchors[0, 0] = 1.0  # nobody can change what the next forward gets
    assert rpn._anchors((64, 64), maps)[0] is anchors  # same key: kept
    # Any part of the key changed: made again.
    smaller = [np.zeros((1, 4, s, s), np.float32) for s in (8, 4, 2, 1, 1)]
    np.testing.assert_array_equal(
        rpn._anchors((32, 32), smaller)[0], fresh(rpn.anchor_generator, (32, 32), smaller)
    )
    doubles = [m.astype(np.float64) for m in maps]
    assert rpn._anchors((64, 64), doubles)[0].dtype == np.float64
    copy = pickle.loads(pickle.dumps(rpn))  # as a Ray worker gets the model
    assert not copy._anchors((64, 64), doubles)[0].flags.writeable  # the key it kept
    rpn.anchor_generator = AnchorGenerator(((4,), (8,), (16,), (32,), (64,)), ((1.0,),) * 5)
    np.testing.assert_array_equal(
        rpn._anchors((64, 64), maps)[0], fresh(rpn.anchor_generator, (64, 64), maps)
    )
