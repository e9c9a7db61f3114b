import pathlib

import numpy as np
import pytest
from gradcheck import numerical_grad

from tinymaskrcnn.masks import (
    MaskRCNNHeads,
    MaskRCNNPredictor,
    expand_boxes,
    mask_loss,
    mask_probabilities,
    paste_masks_in_image,
    project_masks_on_boxes,
)

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "transform.npz"


# --- targets --------------------------------------------------------------------------


def test_a_roi_inside_an_object_gets_an_all_ones_target():
    gt = np.zeros((1, 40, 40), np.uint8)
    gt[0, 5:35, 5:35] = 1
    target = project_masks_on_boxes(gt, np.array([[10, 10, 30, 30.0]]), np.array([0]), 28)
    assert target.shape == (1, 28, 28)
    np.testing.assert_allclose(target, 1.0)


def test_each_roi_reads_the_mask_of_its_matched_object():
    gt = np.zeros((2, 20, 20), np.uint8)
    gt[1] = 1
    boxes = np.array([[2, 2, 10, 10.0], [2, 2, 10, 10.0]])
    target = project_masks_on_boxes(gt, boxes, np.array([1, 0]), 8)
    np.testing.assert_allclose(target[0], 1.0)
    np.testing.assert_allclose(target[1], 0.0)


def test_a_roi_half_over_an_object_gets_soft_values_at_the_edge_only():
    gt = np.zeros((1, 32, 32), np.uint8)
    gt[0, :, :16] = 1  # left half
    (target,) = project_masks_on_boxes(gt, np.array([[8, 8, 24, 24.0]]), np.array([0]), 28)
    # RoIAlign (aligned=False) reads column j at x = 8 + (j + 0.5) * 16/28: the mask's
    # edge between pixel centres 15 and 16 falls in columns 12 and 13.
    np.testing.assert_allclose(target[:, :12], 1.0)
    np.testing.assert_allclose(target[:, 14:], 0.0, atol=1e-12)
    assert np.all((target[:, 12:14] > 0) & (target[:, 12:14] < 1))


def test_no_positive_rois_give_an_empty_target():
    out = project_masks_on_boxes(np.zeros((1, 8, 8)), np.zeros((0, 4)), np.zeros(0), 28)
    assert out.shape == (0, 28, 28)


def test_unknown_mask_loss_names_the_choices():
    with pytest.raises(ValueError, match="one of sigmoid, softmax"):
        mask_loss(np.zeros((1, 2, 2, 2)), np.array([1]), np.zeros((1, 2, 2)), "l2")


# --- head -----------------------------------------------------------------------------


def test_mask_head_and_predictor_backward_match_central_differences():
    rng = np.random.default_rng(0)
    head = MaskRCNNHeads(3, (4, 4), rng=rng).astype(np.float64)
    pred = MaskRCNNPredictor(4, 4, 3, rng=rng).astype(np.float64)
    x = rng.normal(size=(2, 3, 4, 4))
    labels = np.array([1, 2])
    targets = rng.uniform(0, 1, (2, 8, 8))

    def loss():
        logits = pred(head(x))
        head.forget()
        pred.forget()
        return mask_loss(logits, labels, targets)[0]

    logits = pred(head(x))
    assert logits.shape == (2, 3, 8, 8)
    gx = head.backward(pred.backward(mask_loss(logits, labels, targets)[1]))
    np.testing.assert_allclose(gx, numerical_grad(loss, x), atol=1e-7)
    w = head[0][0].weight
    np.testing.assert_allclose(w.grad, numerical_grad(loss, w.data), atol=1e-7)


def test_mask_head_loads_the_old_mask_fcn_keys():
    head = MaskRCNNHeads(3, (4, 4), rng=np.random.default_rng(0))
    state = {
        k.replace("0.0.", "mask_fcn1.").replace("1.0.", "mask_fcn2."): v + 1
        for k, v in head.state_dict().items()
    }
    assert "mask_fcn2.weight" in state
    head.load_state_dict(state)
    np.testing.assert_array_equal(head[1][0].weight.data, state["mask_fcn2.weight"])


def test_mask_probabilities_read_the_predicted_class_channel():
    logits = np.zeros((2, 3, 2, 2))
    logits[0, 1] = 5.0
    logits[1, 2] = -5.0
    probs = mask_probabilities(logits, np.array([1, 2]))
    assert probs.shape == (2, 1, 2, 2)
    np.testing.assert_allclose(probs[0], 1 / (1 + np.exp(-5.0)))
    np.testing.assert_allclose(probs[1], 1 / (1 + np.exp(5.0)))


# --- pasting --------------------------------------------------------------------------


def test_expand_boxes_scales_about_the_centre():
    np.testing.assert_allclose(expand_boxes(np.array([[10, 20, 30, 60.0]]), 1.5), [[5, 10, 35, 70]])


def test_a_mask_of_ones_fills_its_box_and_nothing_outside():
    out = paste_masks_in_image(
        np.ones((1, 1, 28, 28), np.float32), np.array([[10, 12, 40, 30.0]]), (50, 60)
    )
    assert out.shape == (1, 1, 50, 60) and out.dtype == np.float32
    assert np.all(out[0, 0, 13:29, 11:39] > 0.9)
    assert out[0, 0, :10].sum() == 0 and out[0, 0, :, 42:].sum() == 0


def test_no_detections_paste_to_an_empty_array():
    assert paste_masks_in_image(np.zeros((0, 1, 28, 28)), np.zeros((0, 4)), (5, 7)).shape == (
        0,
        1,
        5,
        7,
    )


def test_pasting_equals_torchvisions_paste_masks_in_image():
    fx = np.load(FIXTURE)
    out = paste_masks_in_image(fx["paste_masks"], fx["paste_boxes"], (40, 48))
    np.testing.assert_allclose(out, fx["paste_out"], atol=1e-6)
