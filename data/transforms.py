"""Training and test transforms of both stages (method.md D.2 step 6, F.2).

Input of every transform here is a PIL image in RGB mode that the dataset has already resized to
``h x w`` (IR images are 3-channel too). Output tensors are float32 ``3 x h x w``, normalised with the
ImageNet mean/std. The channel augmentations operate on the *normalised* tensor, as in the released
code, so the random-erasing fill constants and the grayscale luminance are applied in normalised
space.

All randomness comes from torch's global RNG (torchvision's transforms and ``torch.rand``/
``torch.randint`` here), so DataLoader worker seeding makes the augmentation reproducible.

Speed: each view is a torchvision ``Compose`` whose step list documents the pipeline, but :class:`FastView`
runs pad → crop → flip → to-tensor → normalise as one pass over the uint8 array (one crop copy, one flip,
one float conversion) instead of three PIL round trips and a strided HWC→CHW float copy, drawing the
same random numbers in the same order: for the same RNG state the output is bit-identical to the plain
``Compose`` of the same steps (tests/test_transforms.py), about 3× faster. Datasets hand these views the
uint8 array directly (``accepts_uint8``), skipping the PIL image.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fill constants of the released random erasing: the CIFAR channel means, written unchanged into the
# ImageNet-normalised tensor (a quirk we keep: the erased patch is therefore not "mean grey").
ERASE_VALUE = (0.4914, 0.4822, 0.4465)


class ChannelRandomErasing(T.RandomErasing):
    """Random erasing as released (method.md D.2 step 6), on a normalised ``(..., C, H, W)`` tensor.

    With probability ``p``: up to ``attempts`` candidate rectangles are drawn with area fraction
    ``a ~ U(area)`` and aspect ratio ``r ~ U(min_aspect, 1/min_aspect)`` (uniform, *not* the
    log-uniform of torchvision), height ``round(sqrt(a*r*H*W))`` and width ``round(sqrt(a/r*H*W))``.
    The first candidate that fits strictly (``h < H`` and ``w < W``) gets a uniform top-left corner and
    is filled, per channel, with ``value``. If none fits the image is returned unchanged.

    Only :meth:`get_params` differs from :class:`torchvision.transforms.RandomErasing`; the probability
    test and the filling (``F.erase``, not in place) are torchvision's.
    """

    def __init__(self, p: float = 0.5, area: Tuple[float, float] = (0.02, 0.4), min_aspect: float = 0.3,
                 value: Sequence[float] = ERASE_VALUE, attempts: int = 100, inplace: bool = False):
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        super().__init__(p=p, scale=tuple(area), ratio=(min_aspect, 1.0 / min_aspect), value=list(value),
                         inplace=inplace)
        self.attempts = int(attempts)

    def get_params(self, img: Tensor, scale: Tuple[float, float], ratio: Tuple[float, float],
                   value: Optional[Sequence[float]] = None):
        """Draw the rectangle ``(i, j, h, w, v)`` that ``F.erase`` fills.

        Instance method (torchvision's is static) because the number of attempts is a setting; the
        base class calls it as ``self.get_params(img, scale=..., ratio=..., value=...)``. All attempts
        are drawn at once and the first fitting one is used, which has the same distribution as the
        released sequential loop.
        """
        img_h, img_w = img.shape[-2], img.shape[-1]
        pixels = img_h * img_w
        fraction = torch.empty(self.attempts).uniform_(scale[0], scale[1])
        aspect = torch.empty(self.attempts).uniform_(ratio[0], ratio[1])
        # torch.round rounds half to even, like Python 3's round() in the released code.
        hs = torch.round(torch.sqrt(fraction * pixels * aspect)).long()
        ws = torch.round(torch.sqrt(fraction * pixels / aspect)).long()
        fits = torch.nonzero((hs < img_h) & (ws < img_w)).flatten()
        if fits.numel() == 0:
            # Same convention as torchvision: erasing the whole image with itself leaves it unchanged.
            return 0, 0, img_h, img_w, img
        k = int(fits[0])
        h, w = int(hs[k]), int(ws[k])
        i = int(torch.randint(0, img_h - h + 1, size=(1,)))
        j = int(torch.randint(0, img_w - w + 1, size=(1,)))
        if value is None:  # the base class turns value="random" into None
            v = torch.empty([img.shape[-3], h, w], dtype=torch.float32).normal_()
        else:
            v = torch.tensor(value, dtype=torch.float32)[:, None, None]
        return i, j, h, w, v

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, attempts={self.attempts})"


def _replicate_channel(img: Tensor, c: int) -> Tensor:
    """Copy channel ``c`` of a ``(..., 3, H, W)`` tensor into all three channels (new tensor)."""
    return img[..., c:c + 1, :, :].expand(img.shape).clone()


class ChannelExchange(torch.nn.Module):
    """Replace all three channels by one channel chosen uniformly from R, G, B (method.md D.2 step 6).

    This is the released ``ChannelExchange(gray=2)``: its index is drawn from {0, 1, 2}, so the
    grayscale branch of that class (index 3) is unreachable and is not reproduced. Input/output:
    ``(..., 3, H, W)`` tensor; one draw per call (a batched input gets the same channel throughout).
    """

    def forward(self, img: Tensor) -> Tensor:
        """Return a new tensor whose three channels all equal the chosen input channel."""
        c = int(torch.randint(0, 3, size=(1,)))
        return _replicate_channel(img, c)


class ChannelAdapGray(torch.nn.Module):
    """Channel-adaptive graying of IR images as released (method.md D.2 step 6).

    Draw ``u`` uniformly from {0, 1, 2, 3}. ``u < 3``: channel ``u`` is copied into all channels.
    ``u = 3``: with probability ``p`` all channels become the luminance ``0.2989 R + 0.5870 G +
    0.1140 B`` (computed on the normalised values), otherwise the image is unchanged. Hence
    channel replication 3/4, grayscale p/4, unchanged (1-p)/4. Input/output ``(..., 3, H, W)``.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, img: Tensor) -> Tensor:
        """Apply one random draw of the transform; never modifies ``img`` in place."""
        u = int(torch.randint(0, 4, size=(1,)))
        if u < 3:
            return _replicate_channel(img, u)
        if float(torch.rand(1)) < self.p:
            return F.rgb_to_grayscale(img, num_output_channels=3).clone()
        return img

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TwoViews:
    """Apply two transforms to the same image; returns the tuple ``(view_a(img), view_b(img))``.

    Used for the two independently augmented RGB views (method.md D.2 steps 6-7, F.2).
    ``accepts_uint8`` when both views take a uint8 (H, W, 3) array as well as a PIL image.
    """

    def __init__(self, view_a: Callable, view_b: Callable):
        self.view_a = view_a
        self.view_b = view_b
        self.accepts_uint8 = all(getattr(v, "accepts_uint8", False) for v in (view_a, view_b))

    def __call__(self, img) -> Tuple[Tensor, Tensor]:
        """Return ``(view_a(img), view_b(img))``; each call draws fresh randomness for both."""
        return self.view_a(img), self.view_b(img)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(\n  view_a={self.view_a},\n  view_b={self.view_b})"


def _as_uint8(img) -> np.ndarray:
    """(H, W, 3) uint8 view of a PIL image or array (no copy for arrays)."""
    return img if isinstance(img, np.ndarray) else np.asarray(img, dtype=np.uint8)


class FastView(T.Compose):
    """A training or test view whose step list is a plain torchvision pipeline, run fused on uint8.

    ``transforms`` must start with ``[Pad, RandomCrop, RandomHorizontalFlip, ToTensor, Normalize]``
    (training) or ``[ToTensor, Normalize]`` (test); later steps act on the normalised tensor and run as
    they are. The fused pass crops the zero-padded window straight out of the (H, W, 3) uint8 array,
    flips it, and converts once: ``(u8 / 255 - mean) / std`` in float32, the operations ToTensor and
    Normalize perform, so values are bit-identical. Random numbers are drawn exactly as torchvision draws
    them (crop row, crop column — none when the padded image equals the crop —, then the flip), so
    ``T.Compose(view.transforms)(img)`` and ``view(img)`` agree for the same RNG state. Settings the
    fused pass does not cover (non-zero fill, other padding modes, pad_if_needed) take the plain path.
    Input: PIL image or uint8 (H, W, 3) array; output: float32 (3, h, w).
    """

    accepts_uint8 = True

    def _geometry(self):
        """(pad, crop (h, w), flip p, steps after Normalize) — pad None for a test view —, or "plain" when
        the fused pass does not cover the settings."""
        t = self.transforms
        if len(t) >= 2 and isinstance(t[0], T.ToTensor) and isinstance(t[1], T.Normalize):
            return None, None, 0.0, t[2:]
        if len(t) < 5 or not (isinstance(t[0], T.Pad) and isinstance(t[1], T.RandomCrop)
                              and isinstance(t[2], T.RandomHorizontalFlip) and isinstance(t[3], T.ToTensor)
                              and isinstance(t[4], T.Normalize)):
            raise ValueError("FastView needs [Pad, RandomCrop, RandomHorizontalFlip, ToTensor, Normalize, ...] "
                             "or [ToTensor, Normalize, ...]")
        pad, crop = t[0], t[1]
        if not isinstance(pad.padding, int) or pad.fill != 0 or pad.padding_mode != "constant" \
                or crop.padding is not None or crop.pad_if_needed:
            return "plain"
        return pad.padding, tuple(crop.size), float(t[2].p), t[5:]

    def __call__(self, img):
        geometry = self._geometry()
        if geometry == "plain":
            return super().__call__(img if not isinstance(img, np.ndarray) else Image.fromarray(img))
        pad, size, flip_p, rest = geometry
        arr = _as_uint8(img)
        if arr.ndim != 3 or arr.dtype != np.uint8:  # not an RGB image: torchvision's own handling
            return super().__call__(img if not isinstance(img, np.ndarray) else Image.fromarray(img))
        if pad is not None:
            x = _crop_flip(arr, pad, size, flip_p)
        else:
            x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        norm = self.transforms[4 if pad is not None else 1]
        mean = torch.as_tensor(norm.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.as_tensor(norm.std, dtype=torch.float32).view(-1, 1, 1)
        x = x.to(torch.float32).div_(255).sub_(mean).div_(std)
        for step in rest:
            x = step(x)
        return x


def _crop_flip(arr: np.ndarray, pad: int, size: Tuple[int, int], flip_p: float) -> Tensor:
    """Zero-pad by ``pad``, random crop ``size`` and horizontal flip with probability ``flip_p``, drawn as
    T.Pad → T.RandomCrop → T.RandomHorizontalFlip draw them; (H, W, 3) uint8 array → (3, h, w) uint8."""
    (h, w), (src_h, src_w) = size, arr.shape[:2]
    hp, wp = src_h + 2 * pad, src_w + 2 * pad
    if hp < h or wp < w:
        raise ValueError(f"Required crop size {(h, w)} is larger than input image size {(hp, wp)}")
    i = j = 0
    if (hp, wp) != (h, w):  # torchvision draws nothing when the crop is the whole image
        i = int(torch.randint(0, hp - h + 1, size=(1,)).item())
        j = int(torch.randint(0, wp - w + 1, size=(1,)).item())
    top, left = i - pad, j - pad  # window origin in source coordinates (negative = in the padding)
    out = np.zeros((h, w, arr.shape[2]), dtype=np.uint8)
    r0, r1 = max(0, top), min(src_h, top + h)
    c0, c1 = max(0, left), min(src_w, left + w)
    if r1 > r0 and c1 > c0:
        out[r0 - top:r1 - top, c0 - left:c1 - left] = arr[r0:r1, c0:c1]
    # HWC -> CHW in numpy (a fast contiguous copy); the flip in torch (numpy's negative-stride copy is slow).
    x = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
    if torch.rand(1) < flip_p:
        x = x.flip(-1)
    return x


def _base_steps(h: int, w: int, pad: int) -> list:
    """Geometric + tensor steps shared by every training view: pad, crop, flip, ToTensor, Normalize."""
    return [
        T.Pad(pad),  # zero padding, as released
        T.RandomCrop((h, w)),
        T.RandomHorizontalFlip(0.5),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


RELEASED_SIZE, RELEASED_PAD = (288, 144), 10


def scaled_pad(h: int, w: int) -> int:
    """Zero padding before the random crop: the released 10 px at 288 x 144, scaled with the input size
    (2 px at 64 x 32), so the crop jitters by the same fraction of the image at every size."""
    return max(1, round(RELEASED_PAD * min(h / RELEASED_SIZE[0], w / RELEASED_SIZE[1])))


def build_train_transforms(h: int, w: int, pad: Optional[int] = None) -> Tuple[TwoViews, T.Compose]:
    """Training transforms of stage 1 and stage 2 (method.md D.2 step 6, F.2).

    Args:
        h, w: output height and width (288 x 144 in the released code); the dataset has already
            resized the PIL image to this size, so there is no resize step here.
        pad: zero padding before the random crop (default :func:`scaled_pad`: 10 px at the released
            288 x 144, proportionally less for smaller inputs).

    Returns:
        ``(rgb_transform, ir_transform)``.
        ``rgb_transform(img)`` -> ``(view_a, view_b)``, two ``3 x h x w`` tensors with independent
        randomness: view_a = pad -> crop -> flip -> ToTensor -> Normalize -> ChannelRandomErasing(0.5);
        view_b = the same pipeline followed by ChannelExchange.
        ``ir_transform(img)`` -> ``3 x h x w`` tensor: the view_a pipeline followed by
        ChannelAdapGray(0.5).
    """
    pad = scaled_pad(h, w) if pad is None else pad
    # Erasing may write in place: Normalize (or the fused pass) always hands it a fresh tensor.
    view_a = FastView(_base_steps(h, w, pad) + [ChannelRandomErasing(0.5, inplace=True)])
    view_b = FastView(_base_steps(h, w, pad) + [ChannelRandomErasing(0.5, inplace=True), ChannelExchange()])
    ir = FastView(_base_steps(h, w, pad) + [ChannelRandomErasing(0.5, inplace=True), ChannelAdapGray(0.5)])
    return TwoViews(view_a, view_b), ir


def build_test_transform() -> T.Compose:
    """Test / feature-extraction transform: ToTensor -> ImageNet Normalize (input pre-resized PIL image
    or uint8 array; a :class:`FastView`, bit-identical to the plain Compose)."""
    return FastView([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
