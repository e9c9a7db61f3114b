"""``tinymaskrcnn.plotting``: no backend switch at import, one palette for anchor labels."""

import pathlib
import subprocess
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from tinymaskrcnn import plotting
from tinymaskrcnn.plotting.matching import plot_anchor_labels

matplotlib.use("Agg")  # the figures here are inspected, never shown

STAGE_MODULES = ("anchors", "matching", "boxes", "roi_ops", "fpn", "rpn", "masks",
                 "detections", "training")  # fmt: skip


def test_importing_every_plotting_module_leaves_the_backend_alone():
    # A fresh interpreter: this one has imported the modules already.
    imports = "; ".join(f"import tinymaskrcnn.plotting.{m}" for m in STAGE_MODULES)
    code = f"import matplotlib; matplotlib.use('svg'); {imports}; print(matplotlib.get_backend())"
    root = pathlib.Path(plotting.__file__).parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "svg"


@pytest.fixture
def labelled_figure():
    """Anchor labels of a 32x32 image: 2 positive, 5 negative, 3 ignored anchors."""
    anchors = np.array([[0, 0, 8, 8], [2, 2, 10, 10]] + [[k, k, k + 8, k + 8] for k in range(8)])
    anchors = anchors.astype(np.float32)
    positive = np.arange(10) < 2
    negative = (np.arange(10) >= 2) & (np.arange(10) < 7)
    fig = plot_anchor_labels(
        np.zeros((3, 32, 32), np.float32),
        anchors[:1],
        anchors,
        positive,
        negative,
        ~positive & ~negative,
        "test",
        rng=np.random.default_rng(0),
        max_shown=4,
    )
    yield fig
    plt.close(fig)


def test_anchor_labels_use_the_palette_colour_of_each_label(labelled_figure):
    handles, labels = labelled_figure.axes[0].get_legend_handles_labels()
    colour = {
        label.split(" ")[0]: h.get_edgecolor()[:3] for h, label in zip(handles, labels, strict=True)
    }
    assert colour["positive"] == to_rgb(plotting.POSITIVE["color"])
    assert colour["negative"] == to_rgb(plotting.NEGATIVE["color"])
    assert colour["ignored"] == to_rgb(plotting.IGNORED["color"])
    assert colour["ground"] == to_rgb(plotting.GROUND_TRUTH["color"])


def test_anchor_labels_show_every_positive_and_at_most_max_shown_of_the_rest(labelled_figure):
    drawn = {}
    for patch in labelled_figure.axes[0].patches:
        key = patch.get_edgecolor()[:3]
        drawn[key] = drawn.get(key, 0) + 1
    assert drawn[to_rgb(plotting.POSITIVE["color"])] == 2
    assert drawn[to_rgb(plotting.NEGATIVE["color"])] == 4  # 5 negatives, max_shown 4
    assert drawn[to_rgb(plotting.IGNORED["color"])] == 3
