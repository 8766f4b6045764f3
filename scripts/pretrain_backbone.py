"""Pretrain a torchvision ResNet offline on generated visible-only people: a stand-in for ImageNet weights.

MMM starts stage 1 from ImageNet weights; where none can be downloaded, this script makes a starting
point of the same kind: supervised identity classification of a synthetic person population
(:mod:`data.synthetic_pretrain`) with visible images only, no infrared image and no cross-modality pair,
under strong augmentation. It is NOT ImageNet and makes no claim to ImageNet's numbers.

    python scripts/pretrain_backbone.py --out pretrained/resnet18_64x32.pth            # ~4 min on 2 CPU cores
    python baseline_sysu.py --pretrained pretrained/resnet18_64x32.pth ...             # stage 1 (also main.py --init imagenet)

The output is a torchvision ResNet state dict (conv1 ... layer4, without the ``fc`` head), loadable with
``--pretrained FILE`` by both stages; ``FILE.json`` beside it records the settings, the per-epoch training
loss/accuracy and a retrieval check on held-out people of the same population. Deterministic per --seed
(on one machine and thread count).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.sample import DataError  # noqa: E402
from data.synthetic_pretrain import augment, render_population  # noqa: E402
from data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from model.agw import ARCHS, stride_one, make_resnet  # noqa: E402
from utils.checkpoint import atomic_torch_save  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.device import default_threads, resolve_device  # noqa: E402

HELD_OUT_IDS = 60  # people never trained on, for the retrieval check in FILE.json


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output .pth file (a torchvision ResNet state dict)")
    p.add_argument("--arch", default="resnet18", choices=sorted(ARCHS), help="backbone (default: resnet18)")
    p.add_argument("--img-h", type=int, default=64, help="training image height; use the stages' --img-h (default: 64)")
    p.add_argument("--img-w", type=int, default=32, help="training image width; use the stages' --img-w (default: 32)")
    p.add_argument("--ids", type=int, default=500, help="identities of the pretraining population (default: 500)")
    p.add_argument("--images-per-id", type=int, default=16, help="rendered images per identity (default: 16)")
    p.add_argument("--epochs", type=int, default=4, help="passes over the rendered images (default: 4)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate, cosine schedule (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the population, augmentation and init (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: the cores this process may use, at most 8, or 1 when "
                        "other work keeps at least half of them busy)")
    return p


class PretrainNet(nn.Module):
    """torchvision ResNet trunk (layer4 with stride 1, as the stages use it) -> average pool -> BN -> fc."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        self.resnet = make_resnet(arch)
        stride_one(self.resnet.layer4)
        dim = ARCHS[arch][1]
        self.neck = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, num_classes)
        self.resnet.fc = nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, dim) BN-neck features."""
        return self.neck(self.resnet(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes) logits."""
        return self.head(self.embed(x))


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> ImageNet-normalised, as every loader of the project feeds the network."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def render(ids: int, per_id: int, seed: int, h: int, w: int):
    """Population rendered at twice the size and resized like the loaders (bicubic, antialiased)."""
    imgs, labels = render_population(ids, per_id, seed, 2 * h, 2 * w)
    small = F.interpolate(imgs.float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return small.round_().clamp_(0, 255).to(torch.uint8), labels


def train(net, images, labels, args, device) -> list:
    """SGD with a one-epoch linear warm-up and cosine decay; returns per-epoch {loss, acc}."""
    g = torch.Generator().manual_seed(args.seed)
    steps = max(1, len(images) // args.batch_size)
    total = steps * args.epochs
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / steps, 0.5 * (1 + torch.cos(
        torch.tensor(torch.pi * s / total)).item())))
    history = []
    bar = tqdm(total=total, desc=f"pretrain {args.arch}", file=sys.stderr)
    for epoch in range(args.epochs):
        net.train()
        order, loss_sum, correct = torch.randperm(len(images), generator=g), 0.0, 0
        for s in range(steps):
            idx = order[s * args.batch_size:(s + 1) * args.batch_size]
            x = normalise(augment(images[idx], g)).to(device)
            logits = net(x)
            loss = F.cross_entropy(logits, labels[idx].to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
            correct += int((logits.argmax(1).cpu() == labels[idx]).sum())
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / (s + 1):.3f}")
        history.append({"epoch": epoch + 1, "loss": loss_sum / steps, "train_acc": correct / (steps * args.batch_size)})
    bar.close()
    return history


@torch.no_grad()
def held_out_rank1(net, args, device) -> float:
    """Leave-one-out Rank-1 (cosine) on people never trained on (a quick sanity check, in %)."""
    imgs, labels = render(HELD_OUT_IDS, 6, args.seed + 10_000, args.img_h, args.img_w)
    net.eval()
    f = torch.cat([F.normalize(net.embed(normalise(imgs[i:i + 256].float().div(255)).to(device)), dim=1).cpu()
                   for i in range(0, len(imgs), 256)])
    sim = f @ f.t()
    sim.fill_diagonal_(-2.0)
    return 100.0 * float((labels[sim.argmax(1)] == labels).float().mean())


def check_args(args) -> None:
    """One-line errors for values that would fail later."""
    if min(args.ids, args.images_per_id, args.epochs, args.batch_size) < 1 or args.ids < 2:
        raise DataError("--ids (>= 2), --images-per-id, --epochs and --batch-size must be positive")
    if args.img_h < 32 or args.img_w < 16:
        raise DataError(f"--img-h/--img-w must be at least 32/16, got {args.img_h}/{args.img_w}")
    if args.ids * args.images_per_id < args.batch_size:
        raise DataError(f"--ids x --images-per-id ({args.ids * args.images_per_id}) must be >= --batch-size")
    folder = os.path.dirname(os.path.abspath(args.out))
    try:  # before minutes of rendering and training, not after
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise DataError(f"--out {args.out}: cannot create folder {folder} ({err.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise DataError(f"--out {args.out}: folder {folder} is not writable")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Render, train, save the state dict and its JSON record."""
    args = build_parser().parse_args(argv)
    check_args(args)
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    start = time.time()
    images, labels = render(args.ids, args.images_per_id, args.seed, args.img_h, args.img_w)
    net = PretrainNet(args.arch, args.ids).to(device)
    history = train(net, images, labels, args, device)
    rank1 = held_out_rank1(net, args, device)
    state = {k: v.detach().cpu() for k, v in net.resnet.state_dict().items()}
    atomic_torch_save(state, args.out)
    record = {"what": "synthetic visible-only pretraining (an ImageNet stand-in, not ImageNet)",
              "args": {k: v for k, v in vars(args).items() if k != "out"}, "threads": threads,
              "history": history, "held_out_rank1": rank1, "seconds": round(time.time() - start, 1)}
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {args.out} ({args.arch}, {len(images)} images of {args.ids} people, {args.epochs} epochs, "
          f"{record['seconds']:.0f}s); training accuracy {history[-1]['train_acc']:.1%}, held-out Rank-1 "
          f"{rank1:.1f}% ({HELD_OUT_IDS} unseen people, chance {100 / (HELD_OUT_IDS * 6 - 1) * 5:.1f}%)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
