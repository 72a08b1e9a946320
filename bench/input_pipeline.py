"""Training samples per second: our tensor input pipeline against the medmnist Dataset + ToTensor + DataLoader.

The reference (the Flower/MedMNIST tutorials) builds ``medmnist.<Dataset>(split="train",
transform=Compose([ToTensor(), Normalize([.5], [.5])]))`` and iterates a ``DataLoader`` that turns
every image into a PIL image, then a tensor, one sample at a time. We decode the .npz once into a
uint8 tensor and normalise whole batches (common/training.py).

Three measurements per pipeline, each over whole epochs of the training split:
  input only   - producing normalised batches, no model (the pipeline's own ceiling)
  cnn          - a training epoch of the small CNN (where input cost shows most)
  resnet18     - a training epoch of ResNet-18 (compute-bound: the gap narrows)

For the model workloads a third figure, "input free", trains on one batch made in advance and
served again and again: what any input pipeline could at best reach on this machine, so the
largest speed-up over the reference that training could show here.

    python bench/input_pipeline.py --data-root ../shared/data --dataset pneumoniamnist

Results go to stdout as a Markdown table and to bench/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medfed.common import __version__
from medfed.common.data.folders import Split
from medfed.common.data.sources import load_medmnist
from medfed.common.ml.models import build_model
from medfed.common.ml.training import normalize, random_affine, tensors

Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def reference_batches(flag: str, data_root: Path, batch_size: int, workers: int, augment: bool) -> Batches:
    import medmnist
    from torch.utils.data import DataLoader
    from torchvision import transforms

    steps = [transforms.RandomAffine(degrees=10, translate=(0.1, 0.1))] if augment else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])
    dataset_class = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    dataset = dataset_class(split="train", transform=transform, download=False, root=str(data_root), size=28)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in loader:
            yield x, y.reshape(-1).long()

    return batches


def tensor_batches(split: Split, batch_size: int, augment: bool) -> Batches:
    generator = torch.Generator().manual_seed(0)

    images, labels = tensors(split)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(split))
        for start in range(0, len(split), batch_size):
            idx = order[start : start + batch_size]
            x = normalize(images[idx])
            yield (random_affine(x, generator) if augment else x), labels[idx]

    return batches


def free_batches(split: Split, batch_size: int) -> Batches:
    images, labels = tensors(split)
    x, y = normalize(images[:batch_size]), labels[:batch_size]
    steps = -(-len(split) // batch_size)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(steps):
            yield x, y

    return batches


def samples_per_second(batches: Batches, model: nn.Module | None, epochs: int) -> float:
    optimizer = torch.optim.Adam(model.parameters()) if model is not None else None
    seen, started = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in batches():
            if model is not None and optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
            seen += len(y)
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding the MedMNIST .npz (28x28)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the reference (tutorial: 0)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("input_pipeline.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    source = load_medmnist(args.dataset, 28, args.data_root)
    images, labels = source.splits["train"]
    split = Split(np.ascontiguousarray(images[:, None]), labels.astype(np.int64))
    info = source.info
    workloads: dict[str, tuple[Callable[[], nn.Module | None], int]] = {
        "input only": (lambda: None, 3),
        "cnn": (lambda: build_model("cnn", info.channels, info.num_classes), 4),
        "resnet18": (lambda: build_model("resnet18", info.channels, info.num_classes), 1),
    }
    rows = []
    for augment in (False, True):
        pipelines = [
            reference_batches(args.dataset, args.data_root, args.batch_size, args.workers, augment),
            tensor_batches(split, args.batch_size, augment),
            free_batches(split, args.batch_size),
        ]
        for workload, (make_model, epochs) in workloads.items():
            if augment and workload == "resnet18":
                continue  # compute-bound either way; the cnn row shows the effect
            label = f"{workload}{' + augmentation' if augment else ''}"
            rates: list[float | None] = []
            for i, batches in enumerate(pipelines):
                if i == 2 and (workload == "input only" or augment):
                    rates.append(None)  # no model: nothing to bound; augmentation: the same model ceiling
                    continue
                samples_per_second(batches, make_model(), 1 if workload != "resnet18" else 0)  # warm-up
                rates.append(samples_per_second(batches, make_model(), epochs))
            ref, ours, free = rates
            assert ref is not None and ours is not None
            rows.append({
                "workload": label, "epochs": epochs, "reference": ref, "medfed": ours, "speedup": ours / ref,
                "input_free": free, "max_speedup": free / ref if free else None,
            })  # fmt: skip
            print(f"{label}: reference {ref:,.0f}/s, medfed {ours:,.0f}/s, {ours / ref:.1f}x", flush=True)

    print("\n| workload | reference (samples/s) | medfed (samples/s) | speed-up ", end="")
    print("| input free (samples/s) | largest possible speed-up |\n|---|---|---|---|---|---|")
    for r in rows:
        free = f"{r['input_free']:,.0f} | {r['max_speedup']:.2f}x" if r["input_free"] else "- | -"
        print(f"| {r['workload']} | {r['reference']:,.0f} | {r['medfed']:,.0f} | {r['speedup']:.1f}x | {free} |")
    result = {
        "dataset": args.dataset, "train_images": len(split), "batch_size": args.batch_size,
        "reference_workers": args.workers, "threads": args.threads, "rows": rows,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, Python {platform.python_version()}",
        "torch": torch.__version__, "medfed": __version__,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
