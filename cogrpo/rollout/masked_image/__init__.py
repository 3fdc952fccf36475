"""The masked image family: MaskGIT / emerge samplers over token grids and their likelihood estimators."""
