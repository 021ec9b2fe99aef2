"""vitscope.explain against its peers, on the same model, images, targets and target layer.

    python benchmarks/api_vs_peers.py                    # both settings, 1 torch thread
    python benchmarks/api_vs_peers.py --size 32 --json out.json

Two comparisons, in two settings:
- gradcam: `vitscope.explain(model, x, methods=["gradcam"])` against pytorch-grad-cam's
  batched `GradCAM(model, target_layers=[model.blocks[-1].norm1], reshape_transform=...)`
  (the `grad-cam` package, its ViT example's setup), same batch of images;
- grad-rollout: `vitscope.explain(..., methods=["grad-rollout"])` against Chefer et al.'s
  reference loop, written here from the paper's rules 5-6 as their notebook runs it: one
  image at a time, a forward pass that records every block's attention and its gradient
  (tensor hooks), a backward pass from the one-hot target logit with the parameters taking
  gradients, then R = I; R += mean_h max(∇A ⊙ A, 0) · R per block; the map is R[0, 1:].

224 px: timm `vit_tiny_patch16_224` (random weights, seeded; nothing downloaded) on the 20
shipped images resized by timm's preprocessing. 32 px: the shipped checkpoint
(examples/checkpoints/vit-cifar10.pt, vitscope's own ViT) on the same images as it takes them
(more images: repeated). Every tool explains the model's predicted class.

Speed: images/s of the whole call (maps on the patch grid for vitscope; pytorch-grad-cam also
normalises and resizes its maps to the input, as it always does), best of --repeats rounds
after a warm-up, the tools interleaved round by round so load from other processes hits them
alike; "cpu" is this process's CPU seconds per image, the fairer figure on a shared machine.
Memory: the peak RSS one call adds above the process's level before it, each tool in a fresh
subprocess (VmHWM reset through /proc/self/clear_refs; Linux). The maps are checked against
each other: grad-rollout to 1e-4 of the maximum, Grad-CAM by Spearman ρ with pytorch-grad-cam's
map averaged back onto the patch grid. Prints the load average beside the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "checkpoints" / "vit-cifar10.pt"
TOOLS = ("vitscope gradcam", "pytorch-grad-cam", "vitscope grad-rollout", "chefer loop")
SETTINGS = {224: 16, 32: 128}        # images per setting


# ------------------------------------------------------------------------------ the models

def setting(size: int, n: int):
    """(model as a user holds it, normalised inputs n×3×H×W, predicted classes, attention
    modules whose explicit branch the reference loop reads, norm1 of the last block)."""
    import torch
    from PIL import Image
    images = sorted((ROOT / "examples" / "images").glob("*.jpg"))
    if size == 224:
        import timm
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
        cfg = timm.data.resolve_model_data_config(model)
        transform = timm.data.create_transform(**cfg)
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    else:
        from vitscope.data import normalization, to_model_input
        from vitscope.data.images import decode_image
        from vitscope.model.checkpoint import load_model
        model, ckpt = load_model(SHIPPED)
        mean, std = normalization(ckpt)
        import numpy as np
        x = to_model_input(torch.from_numpy(np.stack([decode_image(p, 32) for p in images])),
                           mean, std)
    x = x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n].contiguous()
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target


def grid_of(model):
    if hasattr(model, "patch_embed") and hasattr(model.patch_embed, "grid_size"):
        return tuple(model.patch_embed.grid_size)
    return tuple(model.token_layout.grid)


# --------------------------------------------------------------------------- the four tools

def run_vitscope(method: str):
    import vitscope

    def run(model, x, target):
        ex = vitscope.explain(model, x, methods=[method], target=target.tolist(),
                              preprocessed=True)
        return ex.maps[method]
    return run


def run_grad_cam():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def run(model, x, target):
        h, w = grid_of(model)

        def reshape(t):          # the ViT example's reshape_transform: drop CLS, B×D×h×w
            return t[:, 1:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)
        with GradCAM(model=model, target_layers=[model.blocks[-1].norm1],
                     reshape_transform=reshape) as cam:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    return run


def attention_taps(model, store):
    """Record every block's post-softmax attention and register a hook for its gradient,
    through the model's own attention (timm: attn_drop with fused attention off; vitscope:
    the blocks.*.attn.weights hook points). Returns a function that removes the taps."""
    def keep(t):
        store["attn"].append(t)
        t.register_hook(lambda g: store["grad"].append(g))
    if hasattr(model, "token_layout"):
        from vitscope.model.hooks import attach
        ctx = attach(model, {"blocks.*.attn.weights": lambda t, name: keep(t)})
        ctx.__enter__()
        return lambda: ctx.__exit__(None, None, None)
    handles, flags = [], []
    for blk in model.blocks:
        flags.append(blk.attn.fused_attn)
        blk.attn.fused_attn = False
        handles.append(blk.attn.attn_drop.register_forward_hook(lambda m, a, out: keep(out)))

    def remove():
        for h, blk, f in zip(handles, model.blocks, flags):
            h.remove()
            blk.attn.fused_attn = f
    return remove


def run_chefer():
    import torch

    def run(model, x, target):
        store = {"attn": [], "grad": []}
        remove = attention_taps(model, store)
        maps = []
        try:
            for i in range(len(x)):                      # one image at a time
                store["attn"].clear()
                store["grad"].clear()
                out = model(x[i:i + 1])
                one_hot = torch.zeros_like(out)
                one_hot[0, int(target[i])] = 1
                model.zero_grad()
                (one_hot * out).sum().backward(retain_graph=True)
                attn, grads = store["attn"], store["grad"][::-1]   # gradients arrive last first
                T = attn[0].shape[-1]
                R = torch.eye(T)
                for a, g in zip(attn, grads):
                    cam = (g * a).reshape(-1, T, T).clamp(min=0).mean(dim=0)   # mean over heads
                    R = R + cam @ R
                maps.append(R[0, 1:].detach().numpy())
        finally:
            remove()
        import numpy as np
        return np.stack(maps).reshape(len(x), *grid_of(model))
    return run


RUNNERS = {"vitscope gradcam": lambda: run_vitscope("gradcam"), "pytorch-grad-cam": run_grad_cam,
           "vitscope grad-rollout": lambda: run_vitscope("grad-rollout"),
           "chefer loop": run_chefer}


# ----------------------------------------------------------------------------- measuring

def peak_child(tool: str, size: int, n: int, threads: int) -> dict:
    """In this process (a fresh one): set up, warm up, then the peak RSS one call adds."""
    import torch
    torch.set_num_threads(threads)
    model, x, target = setting(size, n)
    run = RUNNERS[tool]()
    run(model, x[:2], target[:2])                      # imports, kernels, caches
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # VmHWM := VmRSS
    base = _status("VmRSS")
    run(model, x, target)
    return {"peak_mb": (_status("VmHWM") - base) / 1024}


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])                # kB
    raise KeyError(key)


def timing(size: int, n: int, repeats: int, threads: int) -> dict:
    """Every tool on the same inputs, interleaved; best wall and CPU time per round."""
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    model, x, target = setting(size, n)
    runs = {t: RUNNERS[t]() for t in TOOLS}
    maps = {t: np.asarray(run(model, x, target)) for t, run in runs.items()}   # warm-up
    best = {t: [float("inf"), float("inf")] for t in TOOLS}
    for _ in range(repeats):
        for t, run in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            run(model, x, target)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            best[t] = [min(best[t][0], w), min(best[t][1], c)]
    from pytorch_grad_cam.utils.image import scale_cam_image
    theirs = maps["pytorch-grad-cam"]
    # pytorch-grad-cam min-max scales each map, resizes it to the input, and scales the mean
    # over its target layers (one here) again: do that to ours
    shown = scale_cam_image(scale_cam_image(maps["vitscope gradcam"],
                                            target_size=theirs.shape[1:][::-1]))
    ours, ref = maps["vitscope grad-rollout"], maps["chefer loop"]
    return {"images": n, "seconds": best,
            "grad_rollout_max_rel_diff": float(np.abs(ours - ref).max() / np.abs(ref).max()),
            "gradcam_max_diff": float(np.abs(shown - theirs).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, choices=sorted(SETTINGS), action="append",
                    help="224 and/or 32 (default both)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--child", nargs=3, metavar=("WHAT", "SIZE", "TOOL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, size, tool = args.child
        size = int(size)
        out = timing(size, SETTINGS[size], args.repeats, args.threads) if what == "time" \
            else peak_child(tool, size, SETTINGS[size], args.threads)
        print(json.dumps(out))
        return

    def child(*what) -> dict:
        cmd = [sys.executable, __file__, "--child", *map(str, what), "--repeats",
               str(args.repeats), "--threads", str(args.threads)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
        return json.loads(done.stdout.strip().splitlines()[-1])

    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "threads": args.threads, "load_before": os.getloadavg(), "settings": {}}
    print(f"{report['machine']}, torch threads {args.threads}, load average "
          f"{' '.join(f'{v:.2f}' for v in report['load_before'])}")
    for size in args.size or [224, 32]:
        r = child("time", size, "-")
        for tool in TOOLS:
            r.setdefault("peak_mb", {})[tool] = child("peak", size, tool)["peak_mb"]
        n = r["images"]
        print(f"\n{size} px, {n} images "
              f"({'timm vit_tiny_patch16_224, random weights' if size == 224 else 'shipped vit-cifar10.pt'})")
        print(f"  {'tool':<24}{'images/s':>10}{'cpu s/img':>11}{'peak MB':>9}   (peak MB: "
              f"what one call adds; the loop's is one image's)")
        for tool in TOOLS:
            wall, cpu = r["seconds"][tool]
            print(f"  {tool:<24}{n / wall:>10.1f}{cpu / n:>11.4f}{r['peak_mb'][tool]:>9.0f}")
        for ours, peer in (("vitscope gradcam", "pytorch-grad-cam"),
                           ("vitscope grad-rollout", "chefer loop")):
            wall = r["seconds"][peer][0] / r["seconds"][ours][0]
            cpu = r["seconds"][peer][1] / r["seconds"][ours][1]
            r[f"{ours} vs {peer}"] = {"speed": wall, "cpu": cpu}
            print(f"  {ours} vs {peer}: {wall:.2f}× the images/s ({cpu:.2f}× in CPU time)")
        print(f"  maps agree: grad-rollout max difference {r['grad_rollout_max_rel_diff']:.1e} of "
              f"the maximum; Grad-CAM, scaled and resized as pytorch-grad-cam does, max "
              f"difference {r['gradcam_max_diff']:.1e} (maps in [0, 1])")
        report["settings"][str(size)] = r
    report["load_after"] = os.getloadavg()
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in report['load_after'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
