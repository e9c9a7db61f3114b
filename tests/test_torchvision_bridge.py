"""Both ways between torchvision and here: kwargs, exported names, and equal detections.

The fast tier checks ``torchvision_kwargs`` and ``export_torchvision`` against
``fixtures/torchvision_keys.json`` (what torchvision's ``maskrcnn_resnet50_fpn`` builds:
every state_dict name, shape and dtype, and its defaults; ``gen_torchvision_keys.py``
writes it). The slow tier (``-m slow``, needs torch and torchvision) runs real files
through both bridges and compares detections in float64 on a photograph that
matplotlib ships (Grace Hopper, 600 x 512, resized by each model to 800 px).
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from tinymaskrcnn.cli import main
from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.model import MaskRCNN
from tinymaskrcnn.weights import (
    COCO_NAMES,
    export_torchvision,
    load_checkpoint,
    save_checkpoint,
    to_torchvision_state_dict,
    torchvision_kwargs,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "torchvision_keys.json").read_text())

_spec = importlib.util.spec_from_file_location("gen_model", FIXTURES / "gen_model.py")
gen_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_model)  # torch-free at import; only its main() needs torch


# --- torchvision_kwargs ---------------------------------------------------------------


def test_the_r50_preset_gives_torchvisions_own_defaults_under_its_names():
    assert torchvision_kwargs(MaskRCNNConfig.torchvision_resnet50_fpn()) == EXPECTED["defaults"]


def test_kwargs_are_plain_json_values():
    kwargs = torchvision_kwargs(MaskRCNNConfig.torchvision_resnet50_fpn(num_classes=5))
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs["num_classes"] == 5 and kwargs["bbox_reg_weights"] == [10.0, 10.0, 5.0, 5.0]


def test_every_changed_threshold_and_size_is_passed_on():
    cfg = MaskRCNNConfig.torchvision_resnet50_fpn(
        min_size=512, max_size=700, rpn_nms_thresh=0.6, box_score_thresh=0.2,
        box_detections_per_img=30, rpn_post_nms_top_n_test=300, image_mean=(0.5, 0.5, 0.5),
    )  # fmt: skip
    kwargs = torchvision_kwargs(cfg)
    assert (kwargs["min_size"], kwargs["max_size"]) == (512, 700)
    assert kwargs["rpn_nms_thresh"] == 0.6 and kwargs["box_score_thresh"] == 0.2
    assert kwargs["box_detections_per_img"] == 30 and kwargs["rpn_post_nms_top_n_test"] == 300
    assert kwargs["image_mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    "override, named",
    [
        ({"backbone": "resnet101"}, "backbone='resnet101'"),
        ({"backbone_width": 0.5}, "backbone_width=0.5"),
        ({"anchor_sizes": ((16,), (32,), (64,), (128,), (256,))}, "anchor_sizes"),
        ({"aspect_ratios": ((1.0,),) * 5}, "aspect_ratios"),
        ({"roi_op": "pool"}, "roi_op='pool'"),
        ({"mask_layers": (256, 256)}, "mask_layers"),
        ({"fpn_out_channels": 128}, "fpn_out_channels=128"),
        ({"box_representation_size": 512}, "box_representation_size=512"),
        ({"roi_sampling_ratio": 0}, "roi_sampling_ratio=0"),
        ({"mask_loss": "softmax"}, "mask_loss='softmax'"),
    ],
)
def test_a_setting_torchvision_has_no_keyword_for_is_refused_by_name(override, named):
    with pytest.raises(ValueError, match="no keyword for") as info:
        torchvision_kwargs(MaskRCNNConfig.torchvision_resnet50_fpn(**override))
    assert named in str(info.value)


def test_the_shapes_preset_is_refused_for_its_backbone_and_width():
    with pytest.raises(ValueError) as info:
        torchvision_kwargs(MaskRCNNConfig.shapes())
    message = str(info.value)
    assert "backbone='resnet18'" in message and "backbone_width=0.25" in message
    assert "no width multiplier" in message


# --- export: names, shapes, counters ----------------------------------------------------


@pytest.fixture(scope="module")
def r50_checkpoint(tmp_path_factory):
    """A ResNet-50-FPN preset checkpoint (91 classes, COCO names, seeded weights)."""
    model = MaskRCNN(MaskRCNNConfig.torchvision_resnet50_fpn(), class_names=COCO_NAMES)
    path = tmp_path_factory.mktemp("r50") / "r50.safetensors"
    return model.save(path)


def test_the_export_has_exactly_torchvisions_names_shapes_and_dtypes(r50_checkpoint, tmp_path):
    from safetensors.numpy import load_file

    out = export_torchvision(r50_checkpoint, tmp_path / "tv.safetensors")
    exported = load_file(out)
    expected = {name: (tuple(shape), dtype) for name, shape, dtype in EXPECTED["state_dict"]}
    got = {name: (tuple(v.shape), str(v.dtype)) for name, v in exported.items()}
    assert got == expected


def test_batch_norm_counters_are_zero_and_statistics_are_kept(r50_checkpoint):
    state, cfg, _ = load_checkpoint(r50_checkpoint)
    exported = to_torchvision_state_dict(state, cfg)
    counters = [k for k in exported if k.endswith("num_batches_tracked")]
    assert len(counters) == 53
    assert all(exported[k] == 0 and exported[k].dtype == np.int64 for k in counters)
    for name in [k for k in state if k.endswith(("running_mean", "running_var", "bias"))]:
        np.testing.assert_array_equal(exported[name], state[name], err_msg=name)


def test_batch_norm_weights_carry_the_epsilon_torchvision_lacks(r50_checkpoint):
    state, cfg, _ = load_checkpoint(r50_checkpoint)
    assert cfg.frozen_bn_eps == 0.0
    var = np.array([0.5, 1e-4, 2.0], np.float32)
    state["backbone.body.bn1.running_var"] = np.resize(var, 64)
    exported = to_torchvision_state_dict(state, cfg)
    name = "backbone.body.bn1"
    ours = state[f"{name}.weight"].astype(np.float64) / np.sqrt(
        state[f"{name}.running_var"].astype(np.float64) + 0.0
    )
    theirs = exported[f"{name}.weight"].astype(np.float64) / np.sqrt(
        exported[f"{name}.running_var"].astype(np.float64) + 1e-5
    )
    np.testing.assert_allclose(theirs, ours, rtol=1e-6)
    same_eps = to_torchvision_state_dict(state, MaskRCNNConfig.torchvision_resnet50_fpn(
        frozen_bn_eps=1e-5))  # fmt: skip
    np.testing.assert_array_equal(same_eps[f"{name}.weight"], state[f"{name}.weight"])


def test_the_safetensors_export_names_its_kwargs_and_classes(r50_checkpoint, tmp_path):
    from tinymaskrcnn.weights import _read_metadata

    out = export_torchvision(r50_checkpoint, tmp_path / "tv.safetensors")
    meta = _read_metadata(open(out, "rb").read())
    assert json.loads(meta["torchvision_kwargs"]) == EXPECTED["defaults"]
    assert tuple(json.loads(meta["class_names"])) == COCO_NAMES


def test_coco_names_are_those_of_torchvisions_weights():
    assert list(COCO_NAMES) == EXPECTED["categories"]


def test_exporting_the_shipped_shapes_model_refuses_with_the_reason(tmp_path, capsys):
    from tinymaskrcnn import model as model_module

    shipped = pathlib.Path(model_module.__file__).parent / "pretrained" / "shapes.safetensors"
    out = tmp_path / "shapes_tv.safetensors"
    with pytest.raises(SystemExit, match="cannot move to torchvision.*resnet18.*width") as info:
        main(["export-torchvision", str(shipped), str(out)])
    assert "tinymaskrcnn export-torchvision" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_an_export_into_a_missing_folder_is_refused(r50_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="nowhere.*does not exist; create it first"):
        main(["export-torchvision", str(r50_checkpoint), str(tmp_path / "nowhere" / "x.pth")])


def test_an_export_with_another_suffix_is_refused(r50_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match=r"must end in \.safetensors or \.pth"):
        main(["export-torchvision", str(r50_checkpoint), str(tmp_path / "x.onnx")])


def test_a_pth_export_without_torch_says_to_install_it(r50_checkpoint, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(SystemExit, match=r"\.pth needs torch \(pip install torch\)"):
        main(["export-torchvision", str(r50_checkpoint), str(tmp_path / "x.pth")])
    assert not list(tmp_path.iterdir())


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match="nothere.safetensors"):
        out = str(tmp_path / "x.safetensors")
        main(["export-torchvision", str(tmp_path / "nothere.safetensors"), out])


def test_a_checkpoint_without_a_config_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "bare.safetensors", {"a": np.zeros(2, np.float32)})
    with pytest.raises(SystemExit, match="bare.safetensors.*holds no config"):
        main(["export-torchvision", str(path), str(tmp_path / "x.safetensors")])


# --- slow: real files through both bridges, equal detections in float64 -----------------


def _torchvision():
    pytest.importorskip("torch", reason="the torchvision bridge tests need torch")
    return pytest.importorskip(
        "torchvision", reason="the torchvision bridge tests need torchvision"
    )


def _photo():
    from matplotlib import cbook

    from tinymaskrcnn.data.images import read_image

    return read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def _old_key(name):
    """torchvision's older spelling of a current key (the inverse of KEY_RENAMES)."""
    import re

    name = re.sub(r"(inner_blocks|layer_blocks)\.(\d+)\.0\.", r"\1.\2.", name)
    name = name.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
    return re.sub(r"mask_head\.(\d+)\.0\.", lambda m: f"mask_head.mask_fcn{int(m[1]) + 1}.", name)


def _torchvision_detections(model, image):
    import torch

    model = model.double().eval()
    with torch.no_grad():
        (det,) = model([torch.from_numpy(image.astype(np.float64))])
    return {k: v.numpy() for k, v in det.items()}


def _our_detections(model, image):
    (det,) = model.astype(np.float64).eval()([image.astype(np.float64)])
    return det


def _assert_same_detections(ours, theirs):
    assert len(theirs["boxes"]) > 0, "the seeded model detects nothing: the test compares nothing"
    np.testing.assert_array_equal(ours["labels"], theirs["labels"])
    np.testing.assert_allclose(ours["boxes"], theirs["boxes"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(ours["scores"], theirs["scores"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours["masks"], theirs["masks"], rtol=0, atol=1e-4)


def _seeded(shapes):
    return gen_model.model_state({k: v for k, v in shapes.items()}, seed=3)


@pytest.mark.slow
def test_a_torchvision_pth_of_either_key_generation_converts_to_the_same_detections(tmp_path):
    _torchvision()
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    for module in theirs.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 0.0  # as torchvision sets for its COCO weights (overwrite_eps)
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    state = {k: torch.from_numpy(v) for k, v in _seeded(shapes).items()}
    theirs.load_state_dict(state, strict=True)
    torch.save(state, tmp_path / "new.pth")
    torch.save({_old_key(k): v for k, v in state.items()}, tmp_path / "old.pth")
    assert any("mask_fcn1" in k for k in torch.load(tmp_path / "old.pth"))
    for name in ("new", "old"):
        args = ["convert-torchvision", str(tmp_path / f"{name}.pth")]
        assert main([*args, str(tmp_path / f"{name}.safetensors")]) == 0
    new, cfg, _ = load_checkpoint(tmp_path / "new.safetensors")
    old, _, _ = load_checkpoint(tmp_path / "old.safetensors")
    assert sorted(new) == sorted(old)
    for k in new:
        np.testing.assert_array_equal(new[k], old[k], err_msg=k)
    ours = MaskRCNN.from_checkpoint(tmp_path / "old.safetensors")
    assert ours.class_names == COCO_NAMES and cfg.frozen_bn_eps == 0.0
    image = _photo()
    _assert_same_detections(_our_detections(ours, image), _torchvision_detections(theirs, image))


@pytest.mark.slow
def test_an_exported_r50_checkpoint_loads_strictly_into_torchvision_with_the_same_detections(
    tmp_path,
):
    _torchvision()
    import torch
    from safetensors.torch import load_file
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    cfg = MaskRCNNConfig.torchvision_resnet50_fpn()
    ours = MaskRCNN(cfg, class_names=COCO_NAMES)
    ours.load_state_dict(_seeded({k: v.shape for k, v in ours.state_dict().items()}))
    checkpoint = ours.save(tmp_path / "ours.safetensors")
    for suffix in ("safetensors", "pth"):
        out = tmp_path / f"tv.{suffix}"
        assert main(["export-torchvision", checkpoint, str(out)]) == 0
    from_pth = torch.load(tmp_path / "tv.pth", weights_only=True)
    from_safetensors = load_file(tmp_path / "tv.safetensors")
    assert sorted(from_pth) == sorted(from_safetensors)
    for k, v in from_pth.items():
        assert torch.equal(v, from_safetensors[k]), k
    theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **torchvision_kwargs(cfg))
    theirs.load_state_dict(from_safetensors, strict=True)
    image = _photo()
    _assert_same_detections(_our_detections(ours, image), _torchvision_detections(theirs, image))


@pytest.mark.slow
def test_a_pth_of_another_architecture_lists_what_does_not_fit(tmp_path):
    _torchvision()
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.save(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(),
               tmp_path / "faster.pth")  # fmt: skip
    out = tmp_path / "faster.safetensors"
    with pytest.raises(SystemExit, match=r"faster\.pth.*missing \(\d+\): roi_heads\.mask_head"):
        main(["convert-torchvision", str(tmp_path / "faster.pth"), str(out)])
    assert not out.exists()
