"""``invertnet spectrum`` (``injectivity_report``) per layer: turn 2's computation, main 563144b's, and today's.

- turn 2 (``_before``): every layer whose stride divides its input got the full per-frequency SVD
  (``CirculantFactorization``); the others (and the circulant approximations) Lanczos for sigma_max, then three
  Lanczos runs for sigma_min (``A^T A`` smallest, ``A^T A`` largest again for the shift, ``c I - A^T A`` largest).
- 563144b (``_main_563144b``): ``svdvals`` on half the frequencies, the dense ``svdvals`` up to
  ``DENSE_SPECTRUM_ENTRIES`` entries, Lanczos on ``(A^T A)^{-1}`` through a float64 Cholesky factor where it paid,
  else one Lanczos run for sigma_min; no proofs.
- today: the same exact spectra with their proofs (verified DFT and SVD certificates), a verified float64
  Cholesky of ``A^T A - tau I`` (tau from a float32 factor) that proves the bound and gives sigma_min by
  shift-and-invert Lanczos, the dense SVD where the Gram proof is out of reach, Lanczos and a local proof above.

Each line gives the three times, the ratio turn 2 / today (the issue's 5x target at 64 px), the forward + adjoint
applications ("units", counted) and the three sigma_min, and today's proven lower bound.

Run: ``python benchmarks/bench_spectrum.py [--model all-cnn-b-crelu] [--size 64] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _timing import print_machine, touch_memory

from invertnet.analysis.injectivity import KINDS, LayerSpectrum, _layer_spectrum, _linear_operator, _records
from invertnet.capture.graph import capture, last_module_node
from invertnet.linalg.spectral import CirculantFactorization, circulant_reason, circulant_singular_values
from invertnet.linalg.spectrum import (
    DENSE_SPECTRUM_ENTRIES,
    _gram_eigenvalue,
    cholesky_pays,
    dense_singular_values,
    sigma_max,
    sigma_min,
    sigma_min_cholesky,
)
from invertnet.operators import ConvOperator
from invertnet.pinv import ConvLayer
from invertnet.pinv.lsqr import injectivity_certificate
from invertnet.zoo.models import build_model


def _before(op: ConvOperator) -> float:
    """sigma_min as computed in turn 2 (the value; the time is what counts)."""
    (h, w), (sh, sw) = op.in_shape[1:], op.stride
    factorization = None
    if h % sh == 0 and w % sw == 0:
        factorization = CirculantFactorization(op, torch.zeros((), dtype=torch.float64))
        values = factorization.singular_values()
    if factorization is not None and factorization.exact:
        return float(values[-1]) if op.out_dim >= op.in_dim else 0.0
    sigma_max(op)
    if op.out_dim < op.in_dim or bool((op.coverage() == 0).any()):
        return sigma_min(op)[0]  # 0 without Lanczos, then as now
    direct, _ = _gram_eigenvalue(op, "SA", 1e-8, None)
    top, _ = _gram_eigenvalue(op, "LA", 1e-8, None)
    shift = top * (1 + 1e-8)
    flipped, _ = _gram_eigenvalue(op, "LA", 1e-11, None, shift=shift)
    return math.sqrt(max(min(direct, shift - flipped), 0.0))


def _main_563144b(op: ConvOperator) -> float:
    """sigma_min as main 563144b computed it (its certificate now runs the verified patch and window checks)."""
    (h, w), (sh, sw) = op.in_shape[1:], op.stride
    like = torch.zeros((), dtype=torch.float64)
    unread = bool((op.coverage() == 0).any())
    values = None
    if h % sh == 0 and w % sw == 0 and circulant_reason(op) is None:
        values = circulant_singular_values(op, like)
    elif op.out_dim * op.in_dim <= DENSE_SPECTRUM_ENTRIES:
        values = dense_singular_values(op)
    if values is not None:
        return float(values[-1]) if op.out_dim >= op.in_dim and not unread else 0.0
    largest = sigma_max(op)
    result = 0.0
    if op.out_dim < op.in_dim or unread:
        result = 0.0
    elif (by_cholesky := sigma_min_cholesky(op) if cholesky_pays(op) else None) is not None:
        result = by_cholesky
    else:
        certified = injectivity_certificate(ConvLayer(op, (h, w)), like) is not None
        result = sigma_min(op, largest=largest, injective=certified)[0]
    if h % sh == 0 and w % sw == 0:
        circulant_singular_values(op, like)
    return result


_UNITS = [0]
_forward = ConvOperator.forward


def _counted_forward(self: ConvOperator, x: torch.Tensor) -> torch.Tensor:
    _UNITS[0] += x.shape[0]
    return _forward(self, x)


def _timed(fn: object) -> tuple[object, float, int]:
    _UNITS[0], start = 0, time.perf_counter()
    value = fn()  # type: ignore[operator]
    return value, time.perf_counter() - start, _UNITS[0]


def compare(model_name: str, size: int) -> tuple[float, float]:
    """Print the per-layer comparison for one model and size; return the totals (turn 2, today) in seconds."""
    ConvOperator.forward = _counted_forward  # type: ignore[method-assign]  # count applications
    try:
        model = build_model(model_name).double()
        image = torch.zeros(1, 3, size, size, dtype=torch.float64)
        graph = capture(model, image, last_module_node(model, KINDS) or "")
        print(f"\n{model_name} at {size}x{size}, float64, {torch.get_num_threads()} thread(s)")
        print(
            f"{'layer':<12} {'today by':<9} {'proof':<8} {'turn 2':>8} {'563144b':>8} {'today':>8} {'ratio':>6} "
            f"{'units t2':>9} {'today':>6} {'sigma_min turn 2':>17} {'563144b':>13} {'today':>13} {'proven >=':>11}"
        )
        totals = [0.0, 0.0, 0.0]
        for record, previous in _records(graph):
            op = _linear_operator(record)
            if op is None:
                continue
            op = ConvOperator(
                op.weight.double(), op.input_size, op.stride, op.pad.pads, op.dilation, op.groups, op.pad.mode
            )
            old, before, old_units = _timed(lambda o=op: _before(o))
            main, main_seconds, _ = _timed(lambda o=op: _main_563144b(o))
            result, today, new_units = _timed(lambda r=record, p=previous: _layer_spectrum(r, p, 1e-6))
            assert isinstance(result, LayerSpectrum)
            new = result
            totals = [totals[0] + before, totals[1] + main_seconds, totals[2] + today]
            print(
                f"{record.name:<12} {new.sigma_method:<9} {new.proof or '-':<8} {before:>7.2f}s {main_seconds:>7.2f}s "
                f"{today:>7.2f}s {before / today:>6.1f} {old_units:>9} {new_units:>6} {old:>17.10g} {main:>13.10g} "
                f"{new.sigma_min:>13.10g} {new.sigma_min_lower:>11.6g}",
                flush=True,
            )
        ratio = totals[0] / totals[2] if totals[2] > 0 else math.inf
        print(
            f"{'total':<30} {totals[0]:>7.1f}s {totals[1]:>7.1f}s {totals[2]:>7.1f}s {ratio:>6.1f}  "
            f"(target: today <= turn 2 / 5)"
        )
        return totals[0], totals[2]
    finally:
        ConvOperator.forward = _forward  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-cnn-b-crelu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    touch_memory(3.0)  # conv4's Gram matrix and the sums that build it: 1.3 GB
    compare(args.model, args.size)


if __name__ == "__main__":
    main()
