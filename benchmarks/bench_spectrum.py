"""``invertnet spectrum`` (``injectivity_report``) per layer: the computation before this round against today's.

Before: every layer whose stride divides its input got the full per-frequency SVD (``CirculantFactorization``);
the others (and the circulant approximations) Lanczos for sigma_max, then three Lanczos runs for sigma_min
(``A^T A`` smallest, ``A^T A`` largest again for the shift, ``c I - A^T A`` largest). Today: ``svdvals`` on half
the frequencies (once for a 1x1 layer), the dense ``svdvals`` of layers up to ``DENSE_SPECTRUM_ENTRIES``
entries, and one Lanczos run for sigma_min (on ``c I - A^T A`` with sigma_max reused for the shift; on
``A^T A`` when a window or patch certificate proves the layer injective). Both run here, layer by layer, in
one process (one thread by default); each line gives both times and their ratio, the forward + adjoint
applications ("units", what Lanczos costs; counted, so free of the machine's load) and both sigma_min.

Run: ``python benchmarks/bench_spectrum.py [--model all-cnn-b-crelu] [--size 64] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _timing import print_machine, touch_memory

from invertnet.injectivity import _layer_spectrum, _linear_operator
from invertnet.models import build_model
from invertnet.operators import ConvOperator
from invertnet.spectral import CirculantFactorization
from invertnet.spectrum import _gram_eigenvalue, sigma_max, sigma_min
from invertnet.trace import trace


def _before(op: ConvOperator) -> float:
    """sigma_min as computed before this round (the value; the time is what counts)."""
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
    # sigma_min before this round: A^T A smallest, A^T A largest again (the shift), c I - A^T A largest
    direct, _ = _gram_eigenvalue(op, "SA", 1e-8, None)
    top, _ = _gram_eigenvalue(op, "LA", 1e-8, None)
    shift = top * (1 + 1e-8)
    flipped, _ = _gram_eigenvalue(op, "LA", 1e-11, None, shift=shift)
    return math.sqrt(max(min(direct, shift - flipped), 0.0))


_UNITS = [0]
_forward = ConvOperator.forward


def _counted_forward(self: ConvOperator, x: torch.Tensor) -> torch.Tensor:
    _UNITS[0] += x.shape[0]
    return _forward(self, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-cnn-b-crelu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    touch_memory(3.0)  # conv4's Gram matrix and the sums that build it: 1.3 GB
    ConvOperator.forward = _counted_forward  # type: ignore[method-assign]  # count applications
    model = build_model(args.model).double()
    image = torch.zeros(1, 3, args.size, args.size, dtype=torch.float64)
    records = trace(model, image, [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][-1]).records
    print(f"{args.model} at {args.size}x{args.size}, float64, {torch.get_num_threads()} thread(s)")
    print(
        f"{'layer':<12} {'method today':<20} {'before':>8} {'today':>8} {'ratio':>6} {'units before':>13} "
        f"{'today':>6} {'sigma_min before':>17} today"
    )
    total_before = total_today = 0.0
    units_before = units_today = 0
    for i, record in enumerate(records):
        op = _linear_operator(record)
        if op is None:
            continue
        op = ConvOperator(
            op.weight.double(), op.input_size, op.stride, op.pad.pads, op.dilation, op.groups, op.pad.mode
        )
        _UNITS[0], start = 0, time.perf_counter()
        old = _before(op)
        before, old_units = time.perf_counter() - start, _UNITS[0]
        _UNITS[0], start = 0, time.perf_counter()
        new = _layer_spectrum(record, records[i - 1] if i else None, 1e-6)
        today, new_units = time.perf_counter() - start, _UNITS[0]
        total_before, total_today = total_before + before, total_today + today
        units_before, units_today = units_before + old_units, units_today + new_units
        print(
            f"{record.name:<12} {new.method:<20} {before:>7.2f}s {today:>7.2f}s {before / today:>6.1f} "
            f"{old_units:>13} {new_units:>6} {old:>17.10g} {new.sigma_min:.10g}",
            flush=True,
        )
    ratio = total_before / total_today if total_today > 0 else math.inf
    print(f"{'total':<33} {total_before:>7.1f}s {total_today:>7.1f}s {ratio:>6.1f} {units_before:>13} {units_today:>6}")


if __name__ == "__main__":
    main()
