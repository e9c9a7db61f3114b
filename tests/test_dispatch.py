"""The dispatch point: backend selection, errors, and the implementations table."""

import pytest

from tinymaskrcnn import kernels
from tinymaskrcnn.kernels import available_backends, get_backend, implementations, use_backend


def test_the_default_backend_is_the_numpy_reference():
    assert get_backend() == "numpy"


def test_use_backend_as_a_with_block_restores_the_previous_backend():
    with use_backend("numba") as name:
        assert name == "numba"
        assert get_backend() == "numba"
        with use_backend("cuda"):
            assert get_backend() == "cuda"
        assert get_backend() == "numba"
    assert get_backend() == "numpy"


def test_unknown_backend_names_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="unknown backend 'torch'.*numpy, numba, cuda"):
        use_backend("torch")


def test_numpy_numba_and_the_simulated_cuda_backend_are_available_in_tests():
    assert available_backends() == ["numpy", "numba", "cuda"]


def test_implementations_names_a_kernel_or_the_reference_for_every_backend():
    table = implementations()
    for op, row in table.items():
        assert set(row) == set(kernels.BACKENDS), op
        assert row["numpy"] == "reference"
        for backend in ("numba", "cuda"):
            if row[backend] != "reference":
                assert callable(kernels.kernel(op, backend)), (op, backend)


def test_an_unregistered_op_is_a_programming_error():
    with pytest.raises(KeyError, match="not registered"):
        kernels.implementation("no_such_op")


def test_the_environment_variable_must_name_a_backend(monkeypatch):
    monkeypatch.setenv("TINYMASKRCNN_BACKEND", "tpu")
    with pytest.raises(ValueError, match="TINYMASKRCNN_BACKEND='tpu'"):
        kernels._initial_backend()
    monkeypatch.setenv("TINYMASKRCNN_BACKEND", "Numba")
    assert kernels._initial_backend() == "numba"
