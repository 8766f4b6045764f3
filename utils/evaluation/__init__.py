"""The test protocols (method.md H) and everything they need.

protocols.py    run a protocol on a model: features of every test image, per-split metrics, mean +- std
metrics.py      eval_sysu / eval_regdb / eval_llcm: CMC, mAP, mINP from a distance matrix (vectorised)
ranking.py      ranking primitives the metrics share (stable ties, removal rules, distinct-identity CMC)
features.py     batched no-grad feature extraction through each image's modality stem
visualize.py    pictures: a rank grid of queries and their top-10, CMC curves
run_test.py     test.py's body: evaluate saved checkpoints, print the results and write the result JSON
"""
