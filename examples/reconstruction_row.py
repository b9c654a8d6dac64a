"""
The paper's reconstruction row
==============================

Shang et al. (2016), Fig. 5: the input, then the image reconstructed from the features of conv1..conv4 of
All-CNN-B with CReLU (seeded Gaussian filters), layer by layer with the default ``auto`` route: CReLU is undone
exactly (``z = pos - neg``), then each convolution by the cheapest route that provably computes its
Moore-Penrose pseudo-inverse.

Run: ``python examples/reconstruction_row.py [--out DIR] [--small]`` (All-CNN-B at 224x224, about a minute;
``--small``: ConvPool-CNN-C at 32x32 with LSQR capped at 200 iterations a layer, what the tests and this gallery
run). The full-size run gives the
figure below (the same one ``invertnet reconstruct --all-layers assets/astronaut.png`` draws):

.. image:: /astronaut_layers.png
   :alt: the astronaut and its reconstructions from conv1..conv4 of All-CNN-B

From conv1 the image comes back exactly on every pixel a filter reads; conv2's linear pseudo-inverse treats all
192 CReLU channels as free and loses most of the image; conv3 is ruled out by the dimension count (see
:doc:`/user_guide/exact`).
"""

# %%
# The model and the image
# -----------------------
# A zoo model names the layers of the paper's figure and its input size.

from _common import ASSETS, arguments

from invertnet import SolveOptions, reconstruct
from invertnet.io.files import load_image
from invertnet.plotting.figures import layer_row_figure, save_figure
from invertnet.zoo.models import MODELS, build_model

args = arguments("The paper's reconstruction row: the input, then the image from conv1..conv4.")
name = "convpool-cnn-c-crelu" if args.small else "all-cnn-b-crelu"
spec = MODELS[name]
model = build_model(name).double()
image, _ = load_image(ASSETS / "astronaut.png", spec.input_size)
print(f"{name}: layers {', '.join(spec.figure_layers)}, input {tuple(image.shape)}")

# %%
# Reconstruct from each layer
# ---------------------------
# Every :func:`~invertnet.reconstruct` call walks from its layer down to the image and reports, per step, the
# route it took and whether the step is proven exact. An LSQR that stops at its cap says so in its step's note.

options = SolveOptions(maxiter=200 if args.small else 1000)
results = [reconstruct(model, image, layer, options=options) for layer in spec.figure_layers]
psnr = {r.layer: float(r.psnr[0]) for r in results}
for r in results:
    print(f"{r.layer}: {psnr[r.layer]:.2f} dB, exact {r.exact}, routes {[s.route for s in r.steps]}")

# %%
# The figure
# ----------

save_figure(layer_row_figure(results), args.out / "reconstruction_row.png")
# sphinx_gallery_thumbnail_path = 'astronaut_layers.png'
