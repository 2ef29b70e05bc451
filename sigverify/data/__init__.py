"""Data layer: dataset layouts read into an index, synthetic signatures, splits, pairs, batch samplers, preprocessing
with its disk cache, augmentations, and a dataset prepared for an experiment (`prepare`)."""
