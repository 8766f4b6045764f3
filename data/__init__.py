"""Data layer: dataset readers, image loading, transforms and samplers."""
