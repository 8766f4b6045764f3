"""Tests of data/transforms.py: exact semantics and statistics over many seeded draws."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import Compose

from data.transforms import (ERASE_VALUE, IMAGENET_MEAN, IMAGENET_STD, ChannelAdapGray, ChannelExchange,
                             ChannelRandomErasing, TwoViews, build_test_transform, build_train_transforms,
                             scaled_pad)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _erased_box(out, background):
    """(i, j, h, w) of the erased rectangle of a constant-background image, or None."""
    changed = (out != background).any(dim=0)
    if not changed.any():
        return None
    rows, cols = torch.nonzero(changed.any(1)).flatten(), torch.nonzero(changed.any(0)).flatten()
    i, j = int(rows[0]), int(cols[0])
    h, w = int(rows[-1]) - i + 1, int(cols[-1]) - j + 1
    assert int(changed.sum()) == h * w  # a full rectangle
    return i, j, h, w


def test_erasing_frequency_fill_and_geometry():
    H, W = 64, 32
    t = ChannelRandomErasing(p=0.5)
    img = torch.full((3, H, W), -5.0)
    n, erased = 2000, 0
    fill = torch.tensor(ERASE_VALUE, dtype=torch.float32)
    for _ in range(n):
        out = t(img)
        assert out.shape == img.shape and out.dtype == torch.float32
        box = _erased_box(out, -5.0)
        if box is None:
            continue
        erased += 1
        i, j, h, w = box
        assert h < H and w < W  # fits strictly
        patch = out[:, i:i + h, j:j + w]
        assert torch.equal(patch, fill[:, None, None].expand_as(patch))  # exact per-channel constants
        # Consistent with some area fraction in [0.02, 0.4] and aspect in [0.3, 1/0.3] up to rounding.
        N = H * W
        assert (h + .5) * (w + .5) >= 0.02 * N and (h - .5) * (w - .5) <= 0.4 * N
        assert (h + .5) / (w - .5) >= 0.3 and (h - .5) / (w + .5) <= 1 / 0.3
    assert abs(erased / n - 0.5) < 0.04
    assert torch.equal(img, torch.full((3, H, W), -5.0))  # input untouched


def test_erasing_aspect_uniform_not_log_uniform_and_uniform_corner():
    # Small areas on a large square image always fit, so the draw is not conditioned on fitting.
    t = ChannelRandomErasing(p=1.0, area=(0.02, 0.05))
    img = torch.zeros(3, 200, 200)
    ratios, corner = [], []
    for _ in range(2000):
        i, j, h, w, v = t.get_params(img, scale=t.scale, ratio=t.ratio, value=t.value)
        assert 0.02 * 0.8 <= h * w / 40000 <= 0.05 * 1.2
        ratios.append(h / w)
        corner.append(i / (200 - h))
        assert v.shape == (3, 1, 1)
    ratios = np.array(ratios)
    # Uniform on [0.3, 3.33]: P(r > 1) = 0.769, mean 1.82 (log-uniform would give 0.5 and 1.26).
    assert abs((ratios > 1).mean() - (1 / 0.3 - 1) / (1 / 0.3 - 0.3)) < 0.04
    assert abs(ratios.mean() - (0.3 + 1 / 0.3) / 2) < 0.08
    assert abs(np.mean(corner) - 0.5) < 0.03 and min(corner) >= 0 and max(corner) <= 1


def test_erasing_large_area_rejection_still_fits():
    t = ChannelRandomErasing(p=1.0)
    img = torch.zeros(3, 12, 6)
    for _ in range(500):
        i, j, h, w, _ = t.get_params(img, scale=t.scale, ratio=t.ratio, value=t.value)
        assert (h, w) == (12, 6) or (h < 12 and w < 6 and i + h <= 12 and j + w <= 6)


def test_erasing_validation():
    with pytest.raises(ValueError):
        ChannelRandomErasing(min_aspect=2.0)
    with pytest.raises(ValueError):
        ChannelRandomErasing(attempts=0)


def test_channel_exchange():
    img = torch.randn(3, 5, 4)
    before = img.clone()
    counts = np.zeros(3)
    for _ in range(3000):
        out = ChannelExchange()(img)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
        src = [c for c in range(3) if torch.equal(out[0], img[c])]
        assert len(src) == 1
        counts[src[0]] += 1
    assert np.allclose(counts / 3000, 1 / 3, atol=0.03)
    assert torch.equal(img, before)


def test_channel_adap_gray_frequencies_and_luminance():
    img = torch.randn(3, 5, 4)
    lum = 0.2989 * img[0] + 0.5870 * img[1] + 0.1140 * img[2]
    counts = {"c0": 0, "c1": 0, "c2": 0, "gray": 0, "same": 0}
    n = 4000
    t = ChannelAdapGray(0.5)
    for _ in range(n):
        out = t(img)
        assert out.shape == img.shape
        if torch.equal(out, img):
            counts["same"] += 1
            continue
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
        src = [c for c in range(3) if torch.equal(out[0], img[c])]
        if src:
            counts[f"c{src[0]}"] += 1
        else:
            assert torch.allclose(out[0], lum, atol=1e-6)
            counts["gray"] += 1
    expected = {"c0": .25, "c1": .25, "c2": .25, "gray": .125, "same": .125}
    for k, p in expected.items():
        assert abs(counts[k] / n - p) < 0.03, (k, counts[k] / n)


@pytest.mark.parametrize("p,never", [(0.0, "gray"), (1.0, "same")])
def test_channel_adap_gray_probability_extremes(p, never):
    img = torch.randn(3, 4, 4)
    lum = 0.2989 * img[0] + 0.5870 * img[1] + 0.1140 * img[2]
    t = ChannelAdapGray(p)
    for _ in range(400):
        out = t(img)
        kind = "same" if torch.equal(out, img) else "gray" if torch.allclose(out[0], lum, atol=1e-6) else "c"
        assert kind != never


def _ramp_image(h, w):
    """Grey image whose value grows left to right (20..20+10(w-1)), never 0 (0 = zero padding)."""
    row = 20 + 10 * np.arange(w, dtype=np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (h, 1))[:, :, None], 3, axis=2))


def test_pad_crop_flip_keeps_size_and_flips_half():
    h, w = 32, 16
    rgb, _ = build_train_transforms(h, w, pad=10)
    geometric = Compose(rgb.view_a.transforms[:3])  # Pad -> RandomCrop -> RandomHorizontalFlip
    flips, visible = 0, set()
    n = 1000
    for _ in range(n):
        out = geometric(_ramp_image(h, w))
        assert out.size == (w, h)
        row = np.asarray(out)[h // 2, :, 0].astype(int)
        content = row[row > 0]
        visible.add(content.size)
        diffs = np.diff(content)
        assert (diffs > 0).all() or (diffs < 0).all() or content.size <= 1
        flips += bool((diffs < 0).any())
    assert abs(flips / n - 0.5) < 0.05
    assert min(visible) == w - 10 and max(visible) == w  # crop offsets span the whole 10 px padding


def test_default_pad_scales_with_the_input_size():
    assert scaled_pad(288, 144) == 10  # the released size keeps the released padding
    assert scaled_pad(64, 32) == 2 and scaled_pad(384, 192) == 13 and scaled_pad(24, 12) == 1
    for h, w in ((288, 144), (64, 32)):
        pad = build_train_transforms(h, w)[0].view_a.transforms[0]
        assert pad.padding == scaled_pad(h, w)


def test_train_pipelines_shapes_and_channel_structure():
    h, w = 24, 12
    rgb, ir = build_train_transforms(h, w)
    assert isinstance(rgb, TwoViews)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    for _ in range(50):
        a, b = rgb(img)
        t = ir(img)
        for x in (a, b, t):
            assert x.shape == (3, h, w) and x.dtype == torch.float32
        assert torch.equal(b[0], b[1]) and torch.equal(b[1], b[2])  # channel exchange on view b
        assert not torch.equal(a[0], a[1])  # view a keeps colour


def test_two_views_are_independent_draws():
    h, w = 32, 16
    rgb, _ = build_train_transforms(h, w)
    for view in (rgb.view_a, rgb.view_b):
        view.transforms[-1 if view is rgb.view_a else -2].p = 0.0  # no erasing, to read the flip
    differ = 0
    for _ in range(400):
        a, b = rgb(_ramp_image(h, w))
        differ += not torch.equal(a, b)
    assert differ > 300  # same crop and flip only by chance


def test_normalisation_values():
    colour = (10, 128, 250)
    img = Image.new("RGB", (8, 16), colour)
    out = build_test_transform()(img)
    assert out.shape == (3, 16, 8) and out.dtype == torch.float32
    for c in range(3):
        expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[c], torch.full((16, 8), expected), atol=1e-6)


# ------------------------------------------------------------------------------------ fused uint8 pipeline
def _reference_views(h, w, pad):
    """The pipelines as they were before the fused pass: plain torchvision Composes on PIL images."""
    from torchvision import transforms as T

    def base():
        return [T.Pad(pad), T.RandomCrop((h, w)), T.RandomHorizontalFlip(0.5), T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD), ChannelRandomErasing(0.5)]

    return (Compose(base()), Compose(base() + [ChannelExchange()]), Compose(base() + [ChannelAdapGray(0.5)]),
            Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))


@pytest.mark.parametrize("h,w,pad,src", [(288, 144, 10, (288, 144)), (64, 32, None, (64, 32)),
                                         (24, 12, 0, (24, 12)), (24, 12, 1, (30, 20)), (31, 17, 3, (31, 17))])
def test_fused_views_equal_the_torchvision_pipeline_for_the_same_rng_state(h, w, pad, src):
    """Same input, same RNG state -> bit-identical tensors and the same random numbers consumed, from a PIL
    image or from the uint8 array (the datasets pass arrays)."""
    rgb, ir = build_train_transforms(h, w, pad)
    ref_a, ref_b, ref_ir, ref_test = _reference_views(h, w, scaled_pad(h, w) if pad is None else pad)
    test = build_test_transform()
    rng = np.random.default_rng(h * w)
    for seed in range(10 if h > 100 else 40):
        arr = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
        for fused, ref in ((rgb.view_a, ref_a), (rgb.view_b, ref_b), (ir, ref_ir), (test, ref_test)):
            torch.manual_seed(seed)
            expected, after = ref(Image.fromarray(arr)), torch.rand(1)
            for img in (arr, Image.fromarray(arr)):
                torch.manual_seed(seed)
                out = fused(img)
                assert out.dtype == torch.float32 and out.is_contiguous()
                assert torch.equal(out, expected), (seed, fused)
                assert torch.equal(torch.rand(1), after)  # same number of draws


def test_fused_view_statistics_match_the_reference():
    """Over many draws: flip rate, crop offsets and erasing rate as torchvision's pipeline gives them."""
    h, w = 32, 16
    rgb, _ = build_train_transforms(h, w, pad=4)
    ramp = np.asarray(_ramp_image(h, w))
    flips, erased, offsets = 0, 0, set()
    for _ in range(1000):
        out = rgb.view_a(ramp)
        mid = out[0, h // 2]
        content = mid[mid > (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0] + 1e-3]
        flips += bool(len(content) > 1 and content[0] > content[-1])
        erased += bool((out == ERASE_VALUE[0]).any())
        offsets.add(int(len(content)))
    assert abs(flips / 1000 - 0.5) < 0.06 and abs(erased / 1000 - 0.5) < 0.06
    assert min(offsets) <= w - 4 and max(offsets) == w


def test_fused_view_unusual_settings_take_the_plain_path():
    from torchvision import transforms as T

    from data.transforms import FastView

    steps = [T.Pad(2, fill=7), T.RandomCrop((16, 8)), T.RandomHorizontalFlip(0.5), T.ToTensor(),
             T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    arr = np.random.default_rng(0).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    torch.manual_seed(3)
    expected = Compose(steps)(Image.fromarray(arr))
    torch.manual_seed(3)
    assert torch.equal(FastView(steps)(arr), expected)
    with pytest.raises(ValueError, match="FastView needs"):
        FastView([T.ToTensor()])(arr)


def test_image_dataset_hands_arrays_to_fused_transforms(tmp_path):
    """ImageDataset skips the PIL image for the project's transforms; the tensors are those of the PIL path."""
    from data.images import ImageDataset
    from data.sample import Sample

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(p)
        paths.append(Sample(str(p), i, 1, "rgb"))
    rgb, _ = build_train_transforms(32, 16)
    seen = []

    class Spy:
        accepts_uint8 = True

        def __call__(self, img):
            seen.append(type(img))
            return rgb(img)

    ds = ImageDataset(paths, Spy(), h=32, w=16)
    plain = ImageDataset(paths, lambda img: rgb(img), h=32, w=16)  # no accepts_uint8: PIL image
    for i in range(3):
        torch.manual_seed(i)
        (a, b), *rest = ds[i]
        torch.manual_seed(i)
        (a2, b2), *rest2 = plain[i]
        assert torch.equal(a, a2) and torch.equal(b, b2) and rest == rest2
    assert seen == [np.ndarray] * 3
    assert rgb.accepts_uint8 and build_test_transform().accepts_uint8
