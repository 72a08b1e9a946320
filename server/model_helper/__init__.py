"""The coordinator's PyTorch helper process.

Why a second process: importing PyTorch costs a process about 250 MB (CPU-only build) to 520 MB
(PyPI's CUDA build) resident before a single weight exists, more than the whole memory budget of a
coordinator that aggregates ResNet-18 updates. So the coordinator works on numpy only, and the two
things that need PyTorch (building the first model, evaluating on the test set) happen in the helper.

- ``host``: the coordinator's side (never imports PyTorch);
- ``worker``: the helper process itself (``python -m medfed.server.model_helper.worker``);
- ``protocol``: the pipe's framing, used by both.
"""
