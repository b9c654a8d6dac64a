"""One cell of an evaluation: an image reconstructed from one layer with one method, one capture per (image, layer).

:class:`CellRunner` is what :func:`~invertnet.evaluation.evaluate.evaluate` (over files, resumable, distributed)
and :func:`~invertnet.evaluation.compare.compare_methods` (one image, in memory) both run: it captures the model
once for each image and layer (:func:`~invertnet.capture.graph.capture`: the fx trace and the forward pass) and
runs every method on that capture, with the options of its method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from invertnet.capture.graph import Graph, capture
from invertnet.pinv import SolveOptions
from invertnet.reconstruction.api import Reconstruction, reconstruct
from invertnet.reconstruction.completion import CompletionOptions
from invertnet.reconstruction.joint import JointOptions

__all__ = ["CellRunner"]


@dataclass
class CellRunner:
    """Reconstruct cells of (image, layer, method), capturing each (image, layer) once.

    Attributes
    ----------
    model : nn.Module
    maxpool, relu, data_range, options
        Passed to every :func:`~invertnet.reconstruction.api.reconstruct` call.
    joint, completion
        Passed to the ``"joint"``, resp. ``"auto"``, calls only.

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 2), CReLU()).double()
    >>> runner = CellRunner(net)
    >>> x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    >>> [runner.run(x, "1", method)[0].exact for method in ("auto", "patch")], runner.captures
    ([True, True], 1)
    """

    model: nn.Module
    maxpool: str = "switches"
    relu: str = "active_set"
    data_range: float = 1.0
    options: SolveOptions | None = None
    joint: JointOptions | None = None
    completion: CompletionOptions | None = None
    captures: int = 0
    _image: torch.Tensor | None = None
    _graph: Graph | None = None
    _capture_seconds: float = 0.0

    def run(self, image: torch.Tensor, layer: str, method: str) -> tuple[Reconstruction, float]:
        """The reconstruction of ``image`` from ``layer`` by ``method``, and its seconds.

        The seconds are the method's and the capture's (timed once per image and layer and counted in every
        method's time, as each would pay it alone).
        """
        if self._graph is None or self._image is not image or self._graph.layer != layer:
            start = time.perf_counter()
            self._graph = capture(self.model, image, layer)
            self._capture_seconds = time.perf_counter() - start
            self._image = image
            self.captures += 1
        start = time.perf_counter()
        result = reconstruct(
            self.model,
            image,
            layer,
            method,
            maxpool=self.maxpool,
            relu=self.relu,
            data_range=self.data_range,
            options=self.options,
            joint=self.joint if method == "joint" else None,
            completion=self.completion if method == "auto" else None,
            graph=self._graph,
        )
        return result, self._capture_seconds + time.perf_counter() - start
