"""Models named by a string: the zoo, 'module:callable', 'path.py:callable', 'torchvision:NAME'; weights strict."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from invertnet.errors import ModelSpecError, WeightsError
from invertnet.specs import load_model

HERE = Path(__file__).resolve().parent
USER = str(HERE / "user_models.py")


def test_a_file_and_a_module_path_both_work():
    model = load_model(f"{USER}:make_model")
    assert type(model).__name__ == "Stem"
    assert isinstance(load_model("torch.nn:Identity"), torch.nn.Identity)


def test_the_zoo_and_its_seed():
    a, b = load_model("all-cnn-b-crelu", seed=1), load_model("all-cnn-b-crelu", seed=1)
    assert torch.equal(a.conv1.conv.weight, b.conv1.conv.weight)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-model", r"expected a built-in model \(.*\), 'module:callable' or 'torchvision:NAME', got 'no-such"),
        ("nonexistent_pkg_xyz:make", r"expected an importable module before the colon, got 'nonexistent_pkg_xyz'"),
        ("missing/file.py:make", r"expected a Python file before the colon, got 'missing/file.py', which does not"),
        (f"{USER}:absent", r"to define 'absent', got no such attribute"),
        (f"{USER}:NOT_CALLABLE", r"expected 'NOT_CALLABLE' to be a callable that returns an nn.Module, got int"),
        (f"{USER}:make_nothing", r"expected make_nothing\(\) to return a torch.nn.Module, got int"),
        (":make", r"expected 'module:callable', with both parts"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        load_model(spec)


def test_torchvision_is_optional():
    try:
        import torchvision  # noqa: F401
    except Exception:  # here it is a CUDA build that does not import on this CPU torch
        with pytest.raises(ModelSpecError, match=r"expected torchvision to import, but it does not here"):
            load_model("torchvision:resnet18")
    else:
        assert isinstance(load_model("torchvision:resnet18"), torch.nn.Module)


def test_weights_that_do_not_fit_are_listed(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(load_model(f"{USER}:make_chain").state_dict(), path)
    with pytest.raises(WeightsError, match=r"does not fit"):
        load_model(f"{USER}:make_model", weights=path)
    chain = load_model(f"{USER}:make_chain", weights=path)
    assert isinstance(chain, torch.nn.Sequential)
