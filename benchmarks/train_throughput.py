"""Training throughput (images/s) of vitscope's pipeline, its bound, and the seed-style pipeline.

    python benchmarks/train_throughput.py --model seed-cifar10 --baseline \
        --data folder:/tmp/vitscope-data/cifar10-jpeg

prints, from one run:
  1. vitscope pipeline: folder data decoded once to uint8 on the device, the full batched
     augmentation (crop+flip, TrivialAugment, mixup/cutmix, label smoothing), AdamW (fused on
     CUDA), bf16 autocast on CUDA, EMA -- exactly the Trainer's step;
  2. bound: the same model and step on synthetic data already normalised on the device;
  3. with --baseline, the seed projects' way: torchvision ImageFolder + DataLoader with 2
     workers, PIL RandomCrop(32, padding=4) + RandomHorizontalFlip + RandAugment, fp32,
     explicit attention (model.set_fused_attn(False)), batch 128, plain AdamW;
and the ratios pipeline / bound and pipeline / baseline. Numbers only: nothing here is a test.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitscope.data import dataset_stats, load_dataset
from vitscope.data.folder import split_dirs
from vitscope.model.vit import count_parameters
from vitscope.train.augment import EpochPlan
from vitscope.train.config import make_config
from vitscope.train.distributed import DistInfo, pick_device
from vitscope.train.engine import TrainData, Trainer
from vitscope.train.optim import resolve_precision
from vitscope.train.runner import build_model, cuda_speed_settings

DEFAULT_DATA = "folder:/tmp/vitscope-data/cifar10-jpeg"
BASELINE_BATCH = 128  # the seed projects' batch size


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="seed-cifar10", help="model preset (vit-tiny, seed-cifar10, ...)")
    p.add_argument("--data", default=DEFAULT_DATA, help="folder:PATH (ImageFolder with train/)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on GPU, 8 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 GPU, 2 CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="vitscope batch (default 512 GPU, 128 CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the vitscope model")
    p.add_argument("--baseline", action="store_true", help="also time the seed-style pipeline")
    p.add_argument("--baseline-batches", type=int, default=None,
                   help="timed baseline batches (default: --steps)")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of fn after `warmup` untimed calls."""
    for i in range(warmup):
        fn(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        fn(i)
    sync(device)
    return time.perf_counter() - t0


def vitscope_pipeline(args, device, train_ds, mean, std):
    """(images/s of the real pipeline, images/s of the synthetic bound, description)."""
    cfg = make_config(preset=args.model, overrides={
        "data": args.data, "batch_size": args.batch_size, "augment": "trivial",
        "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1, "ema": True,
        "compile": args.compile, "device": device.type})
    cfg.model.num_classes = len(train_ds.classes)
    precision = resolve_precision(cfg.precision, device)
    model = build_model(cfg).to(device)
    put = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    data = TrainData(put(train_ds.images), put(train_ds.labels), put(train_ds.images[:1]),
                     put(train_ds.labels[:1]), list(train_ds.classes), mean, std, len(train_ds))
    trainer = Trainer(cfg, model, data, Path(tempfile.mkdtemp()), dist=DistInfo(), device=device,
                      precision=precision, ckpt_train_config={})
    steps_per_epoch = trainer.steps
    plans: dict[int, EpochPlan] = {}

    def real_step(i: int) -> None:
        epoch, k = divmod(i, steps_per_epoch)
        if epoch not in plans:  # drawn once per epoch, as the Trainer does
            plans.clear()
            plans[epoch] = EpochPlan(cfg, len(train_ds), steps_per_epoch, cfg.batch_size,
                                     epoch + 1, 0, cfg.model.image_size, device)
        x, targets, _ = trainer.augment(data.train_images, data.train_labels, plans[epoch].batch(k))
        trainer.train_step(x, targets)

    size = cfg.model.image_size
    x_syn = torch.randn(cfg.batch_size, 3, size, size, device=device)
    t_syn = F.one_hot(torch.randint(0, cfg.model.num_classes, (cfg.batch_size,), device=device),
                      cfg.model.num_classes).float()

    def synthetic_step(i: int) -> None:
        trainer.train_step(x_syn, t_syn)

    # Same model, optimizer and step for both; each gets its own warm-up.
    real = timed(real_step, args.warmup, args.steps, device)
    bound = timed(synthetic_step, args.warmup, args.steps, device)
    n = args.steps * cfg.batch_size
    desc = (f"{precision}, batch {cfg.batch_size}, crop+flip+TrivialAugment+mixup/cutmix+"
            f"label smoothing, EMA{', compiled' if args.compile else ''}")
    return n / real, n / bound, desc, count_parameters(model)


def seed_baseline(args, device, root: Path, mean, std, num_classes: int) -> float:
    """images/s of the seed projects' DataLoader + PIL pipeline (fp32, explicit attention)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.RandAugment(), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    ds = datasets.ImageFolder(str(root), transform=tf)
    loader = DataLoader(ds, batch_size=BASELINE_BATCH, shuffle=True, num_workers=2, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=True)
    cfg = make_config(preset=args.model)
    cfg.model.num_classes = num_classes
    model = build_model(cfg).to(device)
    model.set_fused_attn(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = iter(loader)

    def step(i: int) -> None:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps = args.baseline_batches or args.steps
    seconds = timed(step, args.warmup, steps, device)
    return steps * BASELINE_BATCH / seconds


def check_baseline_data(root: Path, train_root: Path | None) -> None:
    """Before anything is timed: the seed pipeline needs PATH/train/<class>/ with at least one
    full batch (its DataLoader drops the last partial batch, so fewer images give no batch)."""
    if train_root is None:
        sys.exit(f"Error: --baseline reads '{root}/train/<class>/' with torchvision's ImageFolder, "
                 f"but '{root}' has no train/ (or training/) folder; use a folder:PATH laid out so.")
    from torchvision import datasets
    n = len(datasets.ImageFolder(str(train_root)))
    if n < BASELINE_BATCH:
        sys.exit(f"Error: --baseline needs at least {BASELINE_BATCH} training images (one batch "
                 f"of the seed pipeline), but '{train_root}' has {n}; use a larger folder or "
                 f"leave out --baseline.")


def main() -> None:
    args = parse_args()
    make_config(preset=args.model)  # an unknown preset fails now, not after loading 50k images
    device = pick_device(args.device)
    cuda_speed_settings(device)  # as in training (process-wide, so the baseline gets TF32 too)
    gpu = device.type == "cuda"
    args.steps = args.steps or (50 if gpu else 8)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    args.batch_size = args.batch_size or (512 if gpu else 128)
    if not args.data.startswith("folder:"):
        sys.exit("--data must be folder:PATH (an ImageFolder with train/), e.g. " + DEFAULT_DATA)
    root = Path(args.data[len("folder:"):])
    train_root = split_dirs(root.expanduser().absolute())[0] if root.is_dir() else None
    if args.baseline and root.is_dir():  # a missing folder: load_dataset names it below
        check_baseline_data(root, train_root)
    name = torch.cuda.get_device_name(device) if gpu else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} torch threads"
    print(f"device {device} ({name}); torch {torch.__version__}; model {args.model}; data {args.data}")
    t = time.perf_counter()
    train_ds = load_dataset(args.data, "train", 32)
    mean, std = dataset_stats(train_ds)
    print(f"loaded {len(train_ds)} train images in {time.perf_counter() - t:.1f}s (decoded once, cached)")
    if len(train_ds) < args.batch_size:  # the Trainer drops the last partial batch: no steps
        sys.exit(f"Error: the {len(train_ds)} training images of {args.data} are fewer than one "
                 f"batch of {args.batch_size}; pass a smaller --batch-size or a larger folder.")

    real, bound, desc, params = vitscope_pipeline(args, device, train_ds, mean, std)
    print(f"model {args.model}: {params:,} parameters; {args.steps} timed steps after {args.warmup} warm-up")
    print(f"  vitscope pipeline ({desc}): {real:,.0f} images/s")
    print(f"  bound, synthetic data on the device:           {bound:,.0f} images/s "
          f"(pipeline = {100 * real / bound:.0f}% of bound)")
    if args.baseline:
        base = seed_baseline(args, device, train_root, mean, std, len(train_ds.classes))
        print(f"  seed-style baseline (DataLoader, 2 workers, PIL crop+flip+RandAugment, fp32, "
              f"explicit attention, batch 128): {base:,.0f} images/s")
        print(f"  vitscope / baseline: {real / base:.1f}x")


if __name__ == "__main__":
    from vitscope.errors import DataError, VitscopeError
    try:
        main()
    except DataError as e:  # most often: the mirror is not extracted yet
        sys.exit(f"Error: {e}\nThe CIFAR-10 JPEG mirror extracts with (from the repository "
                 f"root): mkdir -p /tmp/vitscope-data && tar xzf ../shared/data/cifar10-jpeg.tar.gz "
                 f"-C /tmp/vitscope-data")
    except VitscopeError as e:
        sys.exit(f"Error: {e}")
