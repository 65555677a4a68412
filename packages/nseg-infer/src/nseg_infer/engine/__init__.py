"""The model side: bundles, backends, tiling, merging, instances and the Predictor. Knows no
files and no products."""
