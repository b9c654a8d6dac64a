"""Layer 4: files: images in and out (scikit-image, Pillow, tifffile), weights (safe loading), atomic writes."""
