"""Data layer: reading dataset layouts into an index, synthetic signatures, splits, pairs and feeds."""
