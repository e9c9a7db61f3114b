import numpy as np
import pytest
from gradcheck import numerical_grad
from hypothesis import given
from hypothesis import strategies as st
from tiny_model import TINY_WIDTHS

from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.model import MaskRCNN
from tinymaskrcnn.roi_heads import (
    FastRCNNPredictor,
    TwoMLPHead,
    fastrcnn_loss,
    postprocess_detections,
    sample_proposals,
)

CFG = MaskRCNNConfig.shapes(box_batch_size_per_image=8, box_positive_fraction=0.25)


def random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size * 0.7, (n, 2))
    wh = rng.uniform(5, size * 0.3, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


# --- sampling ------------------------------------------------------------------------


def test_gt_boxes_join_the_proposals_as_positives():
    gt = np.array([[10, 10, 40, 40.0]])
    rois, labels, matched = sample_proposals(
        np.zeros((0, 4)), gt, np.array([2]), CFG, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(rois, gt)
    np.testing.assert_array_equal(labels, [2])
    np.testing.assert_array_equal(matched, [0])


def test_without_objects_every_sampled_proposal_is_background():
    rng = np.random.default_rng(0)
    rois, labels, _ = sample_proposals(
        random_boxes(rng, 20), np.zeros((0, 4)), np.zeros(0, np.int64), CFG, rng
    )
    assert len(rois) == CFG.box_batch_size_per_image and np.all(labels == 0)


@given(seed=st.integers(0, 10_000), n=st.integers(0, 40), g=st.integers(0, 4))
def test_sampling_respects_the_batch_size_and_the_positive_fraction(seed, n, g):
    rng = np.random.default_rng(seed)
    gt = random_boxes(rng, g)
    props = np.concatenate([random_boxes(rng, n), gt + rng.uniform(-2, 2, gt.shape)])
    rois, labels, matched = sample_proposals(props, gt, rng.integers(1, 4, g), CFG, rng)
    assert len(rois) <= CFG.box_batch_size_per_image
    assert (labels > 0).sum() <= int(CFG.box_batch_size_per_image * CFG.box_positive_fraction)
    assert np.all(labels >= 0)  # 0.5 / 0.5 leaves nothing ignored
    assert len(rois) == len(labels) == len(matched)


# --- losses ---------------------------------------------------------------------------


def test_fastrcnn_loss_gradients_match_central_differences():
    rng = np.random.default_rng(0)
    k, c = 6, 4
    logits = rng.normal(size=(k, c))
    regression = rng.normal(0, 0.2, size=(k, 4 * c))
    labels = np.array([0, 1, 3, 0, 2, 2])
    targets = rng.normal(0, 0.2, size=(k, 4))

    def total():
        loss_cls, loss_box, _, _ = fastrcnn_loss(logits, regression, labels, targets)
        return loss_cls + loss_box

    _, _, g_cls, g_box = fastrcnn_loss(logits, regression, labels, targets)
    np.testing.assert_allclose(g_cls, numerical_grad(total, logits), atol=1e-7)
    np.testing.assert_allclose(g_box, numerical_grad(total, regression), atol=1e-7)
    # background rows and the other classes' deltas get no regression gradient
    assert np.all(g_box[[0, 3]] == 0) and np.all(g_box[1, :4] == 0)


def test_box_head_and_predictor_backward_match_central_differences():
    rng = np.random.default_rng(1)
    head = TwoMLPHead(2 * 3 * 3, 5, rng=rng).astype(np.float64)
    pred = FastRCNNPredictor(5, 3, rng=rng).astype(np.float64)
    x = rng.normal(size=(4, 2, 3, 3))
    w_cls, w_box = rng.normal(size=(4, 3)), rng.normal(size=(4, 12))

    def loss():
        scores, deltas = pred(head(x))
        head.forget()
        pred.forget()
        return (scores * w_cls).sum() + (deltas * w_box).sum()

    pred(head(x))
    gx = head.backward(pred.backward(w_cls, w_box))
    np.testing.assert_allclose(gx, numerical_grad(loss, x), atol=1e-7)
    np.testing.assert_allclose(
        head.fc6.weight.grad, numerical_grad(loss, head.fc6.weight.data), atol=1e-7
    )


# --- inference ------------------------------------------------------------------------


def test_a_confident_class_with_zero_deltas_detects_the_proposal_itself():
    proposals = [np.array([[10, 20, 50, 60.0]])]
    logits = np.array([[0.0, 0.0, 9.0, 0.0]])
    (det,) = postprocess_detections(logits, np.zeros((1, 16)), proposals, [(100, 100)], CFG)
    np.testing.assert_allclose(det["boxes"][0], proposals[0][0])
    assert det["labels"][0] == 2 and det["scores"][0] > 0.99


@given(seed=st.integers(0, 10_000), k=st.integers(0, 30))
def test_detections_are_clipped_sorted_thresholded_and_never_background(seed, k):
    rng = np.random.default_rng(seed)
    cfg = MaskRCNNConfig.shapes(box_detections_per_img=7)
    proposals = [random_boxes(rng, k, 120.0)]
    logits = rng.normal(0, 2, (k, 4))
    deltas = rng.normal(0, 1, (k, 16))
    (det,) = postprocess_detections(logits, deltas, proposals, [(90, 110)], cfg)
    boxes = det["boxes"]
    assert len(boxes) <= 7 and np.all(det["labels"] >= 1)
    assert np.all(det["scores"] > cfg.box_score_thresh) and np.all(np.diff(det["scores"]) <= 0)
    assert np.all(boxes[:, [0, 2]] >= 0) and np.all(boxes[:, [0, 2]] <= 110)
    assert np.all(boxes[:, [1, 3]] >= 0) and np.all(boxes[:, [1, 3]] <= 90)


# --- the RoI-operator ablation --------------------------------------------------------


@pytest.mark.parametrize(
    "overrides", [dict(roi_op="pool"), dict(mask_loss="softmax")], ids=["roipool", "softmax"]
)
def test_the_ablation_switches_train(overrides):
    cfg = MaskRCNNConfig.shapes(
        **TINY_WIDTHS,
        min_size=64,
        max_size=64,
        rpn_post_nms_top_n_train=20,
        box_batch_size_per_image=16,
        **overrides,
    )
    model = MaskRCNN(cfg, rng=np.random.default_rng(0))
    image = np.random.default_rng(1).uniform(0, 1, (3, 64, 64)).astype(np.float32)
    masks = np.zeros((1, 64, 64), np.uint8)
    masks[0, 10:40, 20:50] = 1
    target = {"boxes": np.array([[20, 10, 50, 40.0]]), "labels": np.array([1]), "masks": masks}
    losses = model([image], [target])
    assert all(np.isfinite(v) for v in losses.values()) and losses["loss_mask"] > 0
    model.backward()
    assert model.roi_heads.mask_head[0][0].weight.grad is not None


def test_crop_and_resize_reader_runs_at_inference():
    cfg = MaskRCNNConfig.shapes(**TINY_WIDTHS, roi_op="crop_and_resize")
    model = MaskRCNN(cfg, rng=np.random.default_rng(0))
    (det,) = model.eval()([np.full((3, 64, 64), 0.5, np.float32)])
    assert det["masks"].shape[1:] == (1, 64, 64)
