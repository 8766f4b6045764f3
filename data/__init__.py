"""Data layer: everything that knows about datasets and images.

specs.py (every dataset difference, one list of names), sample.py (Sample, DataError), the raw-layout
readers sysu.py regdb.py llcm.py behind datasets.py, images.py (decoding, pre-resize cache, datasets),
transforms.py, the samplers (samplers.py and sampler_*.py), and the generators of synthetic data in the
real layouts (synthetic*.py).
"""
