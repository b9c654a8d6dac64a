"""
Singular value spectra
======================

Which layers of a model can be inverted at all, and how stably: for every convolution and pooling layer, the
input and output dimensions, the unknowns (half the channels behind a CReLU), the smallest and largest
singular values, the condition number and a verdict (injective, numerically singular, not injective by the
dimension count, ...). The figure draws every layer's singular values: exact where they can be had (the DFT of
a circular or unpadded layer, the SVD of a small layer), the circulant approximation (dashed) elsewhere.

Run: ``python examples/spectra.py [--out DIR] [--small]`` (All-CNN-B at 64x64, a few minutes; ``--small``:
ConvPool-CNN-C at 16x16 up to conv2, what the tests and this gallery run). The command line does the same:
``invertnet spectrum --model all-cnn-b-crelu --plot spectrum.png``. The full-size run:

.. image:: /spectrum_all_cnn_b_64.png
   :alt: singular values of every layer of All-CNN-B at 64x64
"""

# %%
# The report
# ----------
# :func:`~invertnet.injectivity_report` computes one :class:`~invertnet.LayerSpectrum` per layer.

from _common import arguments

from invertnet.analysis.injectivity import injectivity_report
from invertnet.plotting.figures import save_figure, spectrum_figure
from invertnet.zoo.models import build_model

args = arguments("Singular value spectra and injectivity verdicts of every convolution and pooling layer.")
model = build_model("convpool-cnn-c-crelu" if args.small else "all-cnn-b-crelu").double()
size = 16 if args.small else 64
report = injectivity_report(model, (size, size), "conv2" if args.small else None)
verdicts = {r.name: r.verdict for r in report}
for layer, verdict in verdicts.items():
    print(f"{layer:<12} {verdict}")

# %%
# The figure
# ----------

save_figure(spectrum_figure(report), args.out / "spectra.png")
# sphinx_gallery_thumbnail_path = 'spectrum_all_cnn_b_64.png'
