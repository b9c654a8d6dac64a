"""The dimension count over a captured chain: a layer with fewer responses than unknowns has many preimages.

A CReLU doubles its channels without adding freedom: behind one, a layer's possible inputs have half as many
degrees of freedom as entries (Shang et al. 2016).
"""

from __future__ import annotations

import math

from torch import nn

from invertnet.capture.chain import LayerRecord
from invertnet.nn.activations import CReLU

__all__ = ["KINDS", "ruled_out_by_count", "unknowns"]

#: The linear and pooling layers the count applies to.
KINDS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def unknowns(record: LayerRecord, previous: LayerRecord | None) -> int:
    """Degrees of freedom of a layer's possible inputs: half the entries behind a CReLU, else all."""
    size = record.input[0].numel()
    return size // 2 if previous is not None and isinstance(previous.module, CReLU) else size


def ruled_out_by_count(records: list[LayerRecord]) -> str | None:
    """The first layer of a chain with fewer responses than unknowns (its features have many preimages)."""
    for i, record in enumerate(records):
        linear_or_pool = isinstance(record.module, KINDS)
        if linear_or_pool and math.prod(record.output_shape) < unknowns(record, records[i - 1] if i else None):
            return record.name
    return None
