"""The whole model: torchvision parity, the float64 gradient check, invariants, training."""

import importlib.util
import pathlib
import re

import numpy as np
import pytest
from gradcheck import central_difference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_model import tiny_config

from tinymaskrcnn import nn
from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.kernels import use_backend
from tinymaskrcnn.model import LOSS_NAMES, STAGES, MaskRCNN

HERE = pathlib.Path(__file__).parent
_spec = importlib.util.spec_from_file_location("gen_model", HERE / "fixtures" / "gen_model.py")
gen_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_model)  # torch-free at import; only its main() needs torch


def scene(size=64, seed=0, num_objects=2):
    """An image with axis-aligned rectangles of different colours, and their targets."""
    rng = np.random.default_rng(seed)
    image = np.full((3, size, size), 0.5, np.float32) + rng.uniform(-0.05, 0.05, (3, size, size))
    boxes, masks = [], []
    for _ in range(num_objects):
        w, h = rng.integers(size // 5, size // 2, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        m = np.zeros((size, size), np.uint8)
        m[y : y + h, x : x + w] = 1
        image[:, m.astype(bool)] = rng.uniform(0, 1, 3)[:, None]
        boxes.append([x, y, x + w, y + h])
        masks.append(m)
    target = {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "labels": rng.integers(1, 4, num_objects).astype(np.int64),
        "masks": np.array(masks, np.uint8).reshape(-1, size, size),
    }
    return image.astype(np.float32), target


# --- parity with torchvision's maskrcnn_resnet50_fpn (seeded random weights) --------


@pytest.fixture(scope="module")
def parity():
    fx = np.load(HERE / "fixtures" / "model.npz")
    cfg = MaskRCNNConfig.torchvision_resnet50_fpn(
        num_classes=gen_model.NUM_CLASSES,
        frozen_bn_eps=gen_model.FROZEN_BN_EPS,
        **gen_model.SETTINGS,
    )
    model = MaskRCNN(cfg, rng=np.random.default_rng(0))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(gen_model.model_state(shapes))
    return fx, model


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_eval_detections_equal_torchvisions(parity, backend):
    fx, model = parity
    image, _ = gen_model.make_scene()
    with use_backend(backend):
        (det,) = model.eval()([image])
    np.testing.assert_array_equal(det["labels"], fx["eval_labels"])
    np.testing.assert_allclose(det["boxes"], fx["eval_boxes"], atol=1e-3)
    np.testing.assert_allclose(det["scores"], fx["eval_scores"], atol=1e-4)
    # masks were stored as float16 (resolution 2.4e-4 below 0.5)
    np.testing.assert_allclose(det["masks"], fx["eval_masks"].astype(np.float32), atol=1e-3)
    assert det["masks"].dtype == np.float32 and det["masks"].shape == (
        len(det["boxes"]),
        1,
        96,
        128,
    )


def _train_step(model, backend):
    """One float64 training step of the parity model: its losses and the fixture's gradients."""
    image, target = gen_model.make_scene()
    model.train().astype(np.float64)
    try:
        with use_backend(backend):
            losses = model([image.astype(np.float64)], [target])
            model.zero_grad()
            model.backward()
        params = dict(model.named_parameters())
        grads = {n: params[n].grad[gen_model.grad_slice(n)].copy() for n in gen_model.GRAD_NAMES}
        return losses, grads
    finally:
        model.astype(np.float32).eval()


@pytest.fixture(scope="module")
def trained(parity):
    """backend -> (losses, gradients) of one training step, each backend run once."""
    runs = {}

    def run(backend):
        if backend not in runs:
            runs[backend] = _train_step(parity[1], backend)
        return runs[backend]

    return run


# What the fixture holds: torchvision's float64 run, except that (a) its loss_objectness
# is exactly a float32 number (torchvision's RPN labels are float32 and the loss came out
# in their precision; ours differs from it by one float32 ulp), so it can agree to
# float32 only, and (b) the gradients were rounded to float32 to keep the file small:
# float64 gradients equal to rounding show as a relative difference of at most 2**-24
# (half a float32 ulp).
OBJECTNESS_RTOL = 2.0**-22  # two float32 ulps
GRAD_RTOL = 2.0**-23


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_train_losses_and_gradients_equal_torchvisions(parity, trained, backend):
    # Looser than float64 rounding because the resized target boxes are float32 here
    # (the xfail test below holds the float64 bound): 1e-8 relative in the losses.
    fx = parity[0]
    losses, grads = trained(backend)
    for name in LOSS_NAMES:
        assert losses[name] == pytest.approx(float(fx[name]), rel=1e-7), name
    for name, ours in grads.items():
        ref = fx[f"grad/{name}"]
        scale = np.abs(ref).max()
        np.testing.assert_allclose(ours, ref, rtol=5e-7, atol=5e-7 * scale, err_msg=name)


@pytest.mark.xfail(
    strict=True,
    reason="transform.check_targets/resize_boxes round the resized target boxes to float32 "
    "even in a float64 model; torchvision keeps them float64, so four losses differ by "
    "~1e-8 relative and small gradient entries by up to ~2e-5 relative",
)
def test_train_losses_and_gradients_equal_torchvisions_to_float64_rounding(parity, trained):
    fx = parity[0]
    losses, grads = trained("numpy")
    assert losses["loss_objectness"] == pytest.approx(
        float(fx["loss_objectness"]), rel=OBJECTNESS_RTOL
    )
    for name in LOSS_NAMES:
        if name != "loss_objectness":
            assert losses[name] == pytest.approx(float(fx[name]), rel=1e-10, abs=0), name
    for name, ours in grads.items():
        ref = fx[f"grad/{name}"]
        scale = np.abs(ref).max()
        np.testing.assert_allclose(ours, ref, rtol=GRAD_RTOL, atol=1e-12 * scale, err_msg=name)


# --- the whole-model gradient check (float64, central differences) -----------------

CHECKED = [
    "backbone.body.conv1.weight",
    "backbone.body.layer1.0.bn1.weight",
    "backbone.body.layer3.0.conv1.weight",
    "backbone.fpn.inner_blocks.0.0.weight",
    "backbone.fpn.layer_blocks.3.0.bias",
    "rpn.head.conv.0.0.weight",
    "rpn.head.cls_logits.bias",
    "rpn.head.bbox_pred.weight",
    "roi_heads.box_head.fc6.weight",
    "roi_heads.box_predictor.cls_score.bias",
    "roi_heads.box_predictor.bbox_pred.weight",
    "roi_heads.mask_head.0.0.weight",
    "roi_heads.mask_predictor.conv5_mask.weight",
    "roi_heads.mask_predictor.mask_fcn_logits.bias",
]


@pytest.mark.parametrize(
    "options",
    [{}, {"roi_op": "pool", "mask_loss": "softmax"}],
    ids=["align-sigmoid", "pool-softmax"],
)
def test_whole_model_gradient_matches_central_differences(options):
    # The second: RoIPool's backward and the softmax mask loss's, wired into the model.
    cfg = tiny_config(**options)
    model = MaskRCNN(cfg, rng=np.random.default_rng(1)).astype(np.float64)
    image, target = scene(seed=3)
    image = image.astype(np.float64)

    def total_loss():
        model.rng = np.random.default_rng(7)  # the same samples on every evaluation
        return sum(model([image], [target]).values())

    seen = {}
    model.rng = np.random.default_rng(7)
    model([image], [target], trace=lambda stage, **arrays: seen.setdefault(stage, arrays))
    model.backward()
    # Proposals are constants to the RoI heads (torchvision detaches them; Faster R-CNN
    # §3.2's approximate joint training): replay the first ones while perturbing, or the
    # differences would also see boxes move.
    proposals = seen["proposals"]["boxes"]
    rpn_forward = model.rpn.forward
    model.rpn.forward = lambda *a, **k: (proposals, rpn_forward(*a, **k)[1])
    params = dict(model.named_parameters())
    for name in CHECKED:
        p = params[name]
        assert p.grad is not None, f"{name} got no gradient"
        grad = p.grad.reshape(-1)
        # the two entries with the largest gradient: a relative check that means something
        for i in np.argsort(-np.abs(grad))[:2]:
            numeric = central_difference(total_loss, p.data, i, h=1e-6)
            assert grad[i] == pytest.approx(numeric, rel=1e-4, abs=1e-7), f"{name}[{i}]"


# --- the trace: one route through the model -------------------------------------------


def _record(model, *args):
    calls = []
    out = model(*args, trace=lambda stage, **arrays: calls.append((stage, arrays)))
    return out, calls


def test_the_trace_reports_every_stage_once_in_order_and_changes_nothing():
    model = MaskRCNN(tiny_config(box_score_thresh=0.0), rng=np.random.default_rng(3)).eval()
    image = scene(seed=4)[0]
    detections, calls = _record(model, [image])
    stages = [s for s, _ in calls]
    inference = [s for s in STAGES if s not in ("matching", "losses")]
    assert stages == inference
    plain = model([image])
    np.testing.assert_array_equal(plain[0]["boxes"], detections[0]["boxes"])
    arrays = dict(calls)
    assert arrays["masks"]["detections"] is detections
    (kept,) = arrays["proposals"]["nms_keep"]
    (candidates,) = arrays["proposal_candidates"]["boxes"]
    (proposals,) = arrays["proposals"]["boxes"]
    np.testing.assert_array_equal(candidates[kept[: len(proposals)]], proposals)
    assert arrays["fpn"]["features"][0].shape[2:] == arrays["backbone"]["features"][0].shape[2:]


def test_a_training_trace_adds_matching_and_losses_and_skips_the_detections():
    model = MaskRCNN(tiny_config(), rng=np.random.default_rng(3))
    image, target = scene(seed=4)
    losses, calls = _record(model, [image], [target])
    stages = [s for s, _ in calls]
    expected = [s for s in STAGES if s not in ("detections_before_nms", "detections", "masks")]
    assert stages == expected
    arrays = dict(calls)
    assert arrays["losses"] == losses
    (labels,) = arrays["matching"]["labels"]
    assert labels.shape == (len(arrays["anchors"]["anchors"]),) and (labels == 1).any()
    model.backward()


def test_training_stages_refuse_to_sample_without_a_generator():
    model = MaskRCNN(tiny_config(), rng=np.random.default_rng(0))
    image, target = scene(seed=4)
    batch, sizes, targets = model.transform([image], [target])
    features = model.backbone(batch)
    with pytest.raises(ValueError, match="np.random.Generator"):
        model.rpn(features, sizes, batch.shape[2:], targets)


# --- invariants ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_eval_model():
    cfg = tiny_config(box_score_thresh=0.0, box_detections_per_img=15)
    return MaskRCNN(cfg, rng=np.random.default_rng(2)).eval()


def test_detections_lie_inside_the_image_sorted_by_score_and_at_most_n(tiny_eval_model):
    images = [scene(seed=1)[0], scene(seed=2)[0][:, :50, :]]
    for image, det in zip(images, tiny_eval_model(images), strict=True):
        h, w = image.shape[1:]
        boxes, scores = det["boxes"], det["scores"]
        assert 0 < len(boxes) <= 15
        assert np.all(boxes[:, [0, 2]] >= 0) and np.all(boxes[:, [0, 2]] <= w)
        assert np.all(boxes[:, [1, 3]] >= 0) and np.all(boxes[:, [1, 3]] <= h)
        assert np.all(np.diff(scores) <= 0)
        assert np.all((det["labels"] >= 1) & (det["labels"] < 4))
        assert det["masks"].shape == (len(boxes), 1, h, w)
        assert det["masks"].min() >= 0 and det["masks"].max() <= 1


def test_proposals_lie_inside_the_resized_image_and_are_at_most_post_nms_top_n(tiny_eval_model):
    model = tiny_eval_model
    seen = {}
    model([scene(seed=1)[0]], trace=lambda stage, **arrays: seen.setdefault(stage, arrays))
    (h, w) = seen["transform"]["image_sizes"][0]
    (proposals,) = seen["proposals"]["boxes"]
    (scores,) = seen["proposals"]["scores"]
    assert 0 < len(proposals) <= model.cfg.rpn_post_nms_top_n_test
    assert np.all(proposals[:, [0, 2]] >= 0) and np.all(proposals[:, [0, 2]] <= w)
    assert np.all(proposals[:, [1, 3]] >= 0) and np.all(proposals[:, [1, 3]] <= h)
    assert np.all(np.diff(scores) <= 0)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(num_objects=st.sampled_from([0, 1, 5]), seed=st.integers(0, 1000))
def test_training_works_with_zero_one_and_many_objects(num_objects, seed):
    model = MaskRCNN(tiny_config(), rng=np.random.default_rng(seed))
    image, target = scene(seed=seed, num_objects=num_objects)
    losses = model([image], [target])
    assert set(losses) == set(LOSS_NAMES)
    assert all(np.isfinite(v) and v >= 0 for v in losses.values())
    if num_objects == 0:  # background only: nothing to regress or segment
        assert losses["loss_box_reg"] == 0 and losses["loss_mask"] == 0
        assert losses["loss_rpn_box_reg"] == 0
    model.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or np.all(np.isfinite(g)) for g in grads)


def test_a_training_step_on_the_shapes_preset_lowers_the_loss():
    model = MaskRCNN(MaskRCNNConfig.shapes(), rng=np.random.default_rng(0))
    batch = [scene(size=128, seed=s, num_objects=2) for s in (0, 1)]
    images, targets = [b[0] for b in batch], [b[1] for b in batch]
    opt = nn.SGD(model.named_parameters(), lr=0.01, momentum=0.9, weight_decay=0.0)

    def step():
        model.rng = np.random.default_rng(0)
        total = sum(model(images, targets).values())
        model.zero_grad()
        model.backward()
        opt.step()
        return total

    first = step()
    for _ in range(2):
        last = step()
    assert last < first


# --- checkpoints --------------------------------------------------------------------


def test_a_saved_model_loads_back_with_the_same_detections(tmp_path, tiny_eval_model):
    path = tiny_eval_model.save(tmp_path / "tiny.safetensors")
    again = MaskRCNN.from_checkpoint(path)
    assert again.cfg == tiny_eval_model.cfg
    image = scene(seed=4)[0]
    a, b = tiny_eval_model([image])[0], again([image])[0]
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
    np.testing.assert_array_equal(a["masks"], b["masks"])


def test_state_dict_uses_torchvisions_current_names():
    names = set(MaskRCNN(tiny_config(), rng=np.random.default_rng(0)).state_dict())
    for name in (
        "backbone.fpn.inner_blocks.0.0.weight",
        "rpn.head.conv.0.0.weight",
        "roi_heads.box_head.fc6.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_head.0.0.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.weight",
    ):
        assert name in names


def _old_spelling(key):
    """torchvision <= 0.12's spelling of a current key (the inverse of weights.KEY_RENAMES)."""
    key = re.sub(r"(inner_blocks|layer_blocks)\.(\d+)\.0\.", r"\1.\2.", key)
    key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
    return re.sub(r"mask_head\.(\d+)\.0\.", lambda m: f"mask_head.mask_fcn{int(m[1]) + 1}.", key)


def test_old_generation_keys_load_into_the_model():
    model = MaskRCNN(tiny_config(), rng=np.random.default_rng(0))
    state = {_old_spelling(k): v + 1 for k, v in model.state_dict().items()}
    assert "rpn.head.conv.weight" in state and "roi_heads.mask_head.mask_fcn1.weight" in state
    model.load_state_dict(state)
    np.testing.assert_array_equal(
        model.state_dict()["rpn.head.conv.0.0.weight"], state["rpn.head.conv.weight"]
    )


# --- bad input ----------------------------------------------------------------------


def test_training_without_targets_is_a_clear_error():
    model = MaskRCNN(tiny_config(), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs targets"):
        model([scene()[0]])


def test_a_bad_image_or_target_names_the_image_and_the_field():
    model = MaskRCNN(tiny_config(), rng=np.random.default_rng(0))
    image, target = scene()
    with pytest.raises(ValueError, match=r"images\[1\] must be \(3, H, W\)"):
        model([image, image[0]], [target, target])
    bad = {**target, "labels": np.array([1, 9])}
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\]"):
        model([image, image], [target, bad])
    nan = image.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"images\[0\] holds NaN"):
        model.eval()([nan])
