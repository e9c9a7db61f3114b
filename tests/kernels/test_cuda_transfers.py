"""kernels.count_transfers counts every host <-> device copy, and only real copies.

The CUDA kernels and the stages copy through ``kernels.to_device`` and ``kernels.to_host``
alone, so counting there counts them all: a host array sent to the GPU or a device array
brought back is one copy, a device array handed to ``to_device`` (or a host array to
``to_host``) none.
"""

import numpy as np
import pytest

from tinymaskrcnn import kernels, nn
from tinymaskrcnn.boxes import box_iou, nms
from tinymaskrcnn.kernels import count_transfers, use_backend

pytestmark = pytest.mark.cuda


def test_only_real_copies_are_counted_with_their_bytes():
    x = np.arange(6, dtype=np.float32)
    with count_transfers() as copies:
        d_x = kernels.to_device(x)
        assert kernels.to_device(d_x) is d_x  # already there: no copy
        assert kernels.to_host(x) is x  # already here: no copy
        back = kernels.to_host(d_x)
    np.testing.assert_array_equal(back, x)
    assert (copies.to_device, copies.to_host, copies.total) == (1, 1, 2)
    assert copies.bytes_to_device == copies.bytes_to_host == x.nbytes


def test_nested_blocks_each_count_what_happened_inside_them():
    x = np.zeros(3)
    with count_transfers() as outer:
        kernels.to_device(x)
        with count_transfers() as inner:
            kernels.to_device(x)
    kernels.to_device(x)  # outside both
    assert (outer.to_device, inner.to_device) == (2, 1)


def test_a_kernel_on_host_arrays_copies_its_inputs_in_and_its_result_out():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 10, (3, 4)).astype(np.float32)
    a[:, 2:] += a[:, :2]
    with use_backend("cuda"), count_transfers() as copies:
        box_iou(a, a)
    assert (copies.to_device, copies.to_host) == (2, 1)


def test_a_kernel_on_device_arrays_copies_nothing_but_what_it_must():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    with use_backend("cuda"):
        d_x = kernels.to_device(x)
        with count_transfers() as copies:
            d_y = nn.conv2d(d_x, w, None, 1, 1)
    assert kernels.is_device_array(d_y)
    assert (copies.to_device, copies.to_host) == (1, 0)  # the host weight goes in


def test_nms_on_device_boxes_brings_back_only_the_number_kept():
    b = np.array([[0, 0, 4, 4], [0, 0, 4, 3.9], [5, 5, 8, 8]], np.float32)
    scores = np.array([3, 2, 1], np.float32)
    with use_backend("cuda"):
        d_b = kernels.to_device(b)
        with count_transfers() as copies:
            keep = nms(d_b, scores, 0.5)
        np.testing.assert_array_equal(kernels.to_host(keep), [0, 2])
    # in: the score order (sorted on the host); out: the number kept.
    assert (copies.to_device, copies.to_host) == (1, 1)


# --- kernels.DeviceCopy: a layer's parameters cross once per value ----------------------


def test_a_device_copy_is_made_once_per_value_of_its_sources():
    copy = kernels.DeviceCopy()
    a, b = np.arange(4.0), np.arange(4.0) + 10
    with use_backend("cuda"), count_transfers() as copies:
        first = copy.get(lambda: a * 2, [a])
        assert copy.get(lambda: a * 2, [a]) is first  # the same array: no copy
        assert copies.to_device == 1
        np.testing.assert_array_equal(kernels.to_host(first), a * 2)
        assert copy.get(lambda: b * 2, [b]) is not first  # a new value: a new copy
        copy.get(lambda: b * 2, [b], key=np.float32)  # another dtype: a new copy
        copy.get(lambda: (a, b), [a, b], key=np.float32)  # other sources: a new copy
    assert copies.to_device == 1 + 1 + 1 + 2


def test_copied_sources_are_read_only_so_an_in_place_edit_cannot_go_unseen():
    copy = kernels.DeviceCopy()
    a = np.ones(3)
    with use_backend("cuda"):
        copy.get(lambda: a, [a])
    with pytest.raises(ValueError, match="read-only"):
        a[0] = 5.0


def test_without_cuda_a_device_copy_is_the_host_value_and_leaves_its_sources_alone():
    copy = kernels.DeviceCopy()
    a = np.ones(3)
    with use_backend("numpy"), count_transfers() as copies:
        got = copy.get(lambda: a + 1, [a])
    assert isinstance(got, np.ndarray) and copies.total == 0
    a[0] = 5.0  # still writeable


def test_a_convolution_under_cuda_sees_its_new_weights_and_pickles_without_its_copy():
    import pickle

    rng = np.random.default_rng(2)
    conv = nn.Conv2d(2, 3, 3, padding=1, rng=rng).astype(np.float64)
    x = rng.standard_normal((1, 2, 5, 5))
    conv.eval()
    with use_backend("cuda"):
        conv(x)
        conv.weight.data = conv.weight.data * -2.0  # SGD and load_state_dict assign too
        got = conv(x)
        with count_transfers() as copies:
            conv(x)
    np.testing.assert_allclose(got, conv(x), rtol=1e-12)  # numpy, the new weights
    assert copies.to_device == 1  # x: the parameters are already there
    clone = pickle.loads(pickle.dumps(conv))
    with use_backend("cuda"), count_transfers() as copies:
        np.testing.assert_allclose(clone(x), got, rtol=1e-12)
    assert copies.to_device == 3  # x, and the clone's own weight and bias


def test_the_tours_recorder_keeps_host_copies_of_device_arrays():
    # Under "cuda" the FPN hands on device maps and RoIAlign device features; the tour
    # draws its figures and prints its table from what it recorded, on the host.
    from tinymaskrcnn.tour import Recorder

    maps = [np.ones((1, 2, 3, 3)), np.zeros((1, 2, 2, 2))]
    recorder = Recorder()
    with use_backend("cuda"):
        device = [kernels.to_device(m) for m in maps]
        recorder("fpn", features=device, names=("P2", "P3"), detections=[{"boxes": device[1]}])
    got = recorder.arrays["fpn"]
    assert all(isinstance(f, np.ndarray) for f in got["features"])
    np.testing.assert_array_equal(got["features"][0], maps[0])
    assert got["names"] == ("P2", "P3")
    assert isinstance(got["detections"][0]["boxes"], np.ndarray)
