"""Models named by a string: the zoo, 'module:callable', 'path.py:callable', 'torchvision:NAME'; weights strict."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from invertnet.errors import ModelSpecError, WeightsError
from invertnet.zoo.specs import load_model

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


# --- the user's code fails: the factory's failure, one error, whatever it raised --------------------------------

FACTORIES = """
import sys
import torch

def bad_value():
    raise ValueError("width must be even, got 3")

def bad_import():
    import no_such_dependency_xyz

def bad_type():
    return torch.nn.Conv2d(3)

def needs(width, depth=2):
    return torch.nn.Conv2d(3, width, 3)

def bad_runtime():
    raise RuntimeError("CUDA error: no kernel image is available")

def exits():
    sys.exit(0)

def ok():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
"""


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("bad_value", r"bad_value\(\) raised ValueError: width must be even, got 3"),
        ("bad_import", r"bad_import\(\) raised ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
        ("bad_type", r"bad_type\(\) raised TypeError: Conv2d\.__init__\(\) missing 2 required positional"),
        ("needs", r"expected 'needs' to be callable without arguments, got one that needs width; give them defaults"),
        ("bad_runtime", r"bad_runtime\(\) raised RuntimeError: CUDA error: no kernel image is available"),
        ("exits", r"expected exits\(\) to return, but it called sys\.exit\(0\); remove the exit"),
    ],
)
def test_every_factory_failure_is_the_factorys(tmp_path, factory, message):
    (tmp_path / "factories.py").write_text(FACTORIES)
    with pytest.raises(ModelSpecError, match=message):
        load_model(f"{tmp_path / 'factories.py'}:{factory}")


def test_sys_exit_while_importing_is_an_error(tmp_path):
    (tmp_path / "script.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(ModelSpecError, match=r"importing '.*script\.py' to return, but it called sys\.exit\(3\)"):
        load_model(f"{tmp_path / 'script.py'}:make")


def test_a_module_in_the_current_directory_imports_as_under_python_m(tmp_path, monkeypatch):
    (tmp_path / "my_nets_xyz.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    assert isinstance(load_model("my_nets_xyz:ok"), torch.nn.Sequential)
    assert sys.path == before  # the directory is taken off again
    sys.modules.pop("my_nets_xyz", None)


def test_a_missing_module_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ModelSpecError,
        match=r"got 'no_such_nets_xyz': neither the current directory \(.*\) nor the installed packages have "
        r"'no_such_nets_xyz'; check the name, run from the folder that holds it, or give the file",
    ):
        load_model("no_such_nets_xyz:make")


def test_a_model_files_folder_leaves_sys_path_after_the_model_is_built(tmp_path):
    (tmp_path / "nets.py").write_text(FACTORIES)
    before = list(sys.path)
    load_model(f"{tmp_path / 'nets.py'}:ok")
    assert sys.path == before
    assert str(tmp_path) not in sys.path
