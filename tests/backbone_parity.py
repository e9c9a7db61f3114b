"""Shared by test_backbone.py and test_fpn.py: our backbone loaded like the torchvision fixture."""

import functools
import importlib.util
import pathlib

import numpy as np

from tinymaskrcnn.fpn import resnet_fpn_backbone

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("seeded_weights", FIXTURES / "seeded_weights.py")
seeded_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seeded_weights)


def fixture(arch):
    return np.load(FIXTURES / f"backbone_{arch}.npz")


@functools.lru_cache(maxsize=1)
def torchvision_case(arch):
    """(our BackboneWithFPN in eval mode with the fixture's seeded weights, fixture, input).

    Cached: the C and P tests share one ResNeXt-101 build. Eval mode keeps nothing, so
    sharing the model between tests is safe.
    """
    f = fixture(arch)
    model = resnet_fpn_backbone(arch, rng=np.random.default_rng(0)).eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_weights.seeded_state_dict(shapes, int(f["weight_seed"])))
    x = np.random.default_rng(int(f["input_seed"])).standard_normal(tuple(f["input_shape"]))
    return model, f, x.astype(np.float32)


def assert_close_relative(ours, theirs, what):
    """Within 1e-4 of the largest magnitude of torchvision's output."""
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert err < 1e-4, f"{what}: relative error {err:.2e}"
