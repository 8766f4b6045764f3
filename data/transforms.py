"""Training and test transforms of both stages (method.md D.2 step 6, F.2).

Input of every transform here is a PIL image in RGB mode that the dataset has already resized to
``h x w`` (IR images are 3-channel too). Output tensors are float32 ``3 x h x w``, normalised with the
ImageNet mean/std. The channel augmentations operate on the *normalised* tensor, as in the released
code, so the random-erasing fill constants and the grayscale luminance are applied in normalised
space.

All randomness comes from torch's global RNG (torchvision's transforms and ``torch.rand``/
``torch.randint`` here), so DataLoader worker seeding makes the augmentation reproducible.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fill constants of the released random erasing: the CIFAR channel means, written unchanged into the
# ImageNet-normalised tensor (a quirk we keep: the erased patch is therefore not "mean grey").
ERASE_VALUE = (0.4914, 0.4822, 0.4465)
# Coefficients of torchvision's rgb_to_grayscale, identical to the released ChannelAdapGray.
LUMA = (0.2989, 0.587, 0.114)


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
                 value: Sequence[float] = ERASE_VALUE, attempts: int = 100):
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        super().__init__(p=p, scale=tuple(area), ratio=(min_aspect, 1.0 / min_aspect), value=list(value))
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
    """

    def __init__(self, view_a: Callable, view_b: Callable):
        self.view_a = view_a
        self.view_b = view_b

    def __call__(self, img) -> Tuple[Tensor, Tensor]:
        """Return ``(view_a(img), view_b(img))``; each call draws fresh randomness for both."""
        return self.view_a(img), self.view_b(img)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(\n  view_a={self.view_a},\n  view_b={self.view_b})"


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
    view_a = T.Compose(_base_steps(h, w, pad) + [ChannelRandomErasing(0.5)])
    view_b = T.Compose(_base_steps(h, w, pad) + [ChannelRandomErasing(0.5), ChannelExchange()])
    ir = T.Compose(_base_steps(h, w, pad) + [ChannelRandomErasing(0.5), ChannelAdapGray(0.5)])
    return TwoViews(view_a, view_b), ir


def build_test_transform() -> T.Compose:
    """Test / feature-extraction transform: ToTensor -> ImageNet Normalize (input pre-resized PIL)."""
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
