"""The leaderboard of one checkpoint: every map method scored by `vitscope score` on the same
images, printed as one ranked Markdown table (deletion and insertion AUC, randomisation over
weight draws, class sensitivity, localisation where the data has masks, each with its 95%
interval, and the baselines each method does not beat), with the wall and CPU time.

    python benchmarks/leaderboard.py --ckpt examples/checkpoints/vit-cifar10.pt \\
        --data folder:/tmp/vitscope-data/cifar10-jpeg --images 256
    python benchmarks/leaderboard.py --ckpt runs/distractors-quick/best.pt --images 256
    python benchmarks/leaderboard.py --from-json outputs/x/score/score.json   # table only

Measured numbers only: the table is read from the report `score` writes, nothing is tuned.
Methods whose extra is missing (captum) are left out with the pip command to add them.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

METHODS = ["grad-rollout", "attn-grad", "rollout", "gradcam", "gradcam-pp", "hirescam",
           "layercam", "eigencam", "scorecam", "integrated-gradients", "occlusion", "attnlrp",
           "cp-lrp"]
NEEDS_CAPTUM = {"integrated-gradients", "occlusion"}


def ci(e: dict, digits: int = 3) -> str:
    if e is None or e.get("mean") is None:
        return "—"
    lo, hi = e["ci95"]
    return f"{e['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def rho(e: dict | None, full: int) -> str:
    """A ρ with its interval, and n where fewer pairs than `full` had a defined ρ (constant
    maps)."""
    if e is None or e.get("mean") is None:
        return "—"
    return ci(e, 2) + (f" (n={e['n']})" if e.get("n", full) < full else "")


def faith(e: dict, row: dict, curve: str) -> str:
    """An AUC with its interval, ✗ where it does not beat the random order (paired CI)."""
    beats = row.get(f"beats_random_{curve}")
    return ci(e) + (" ✗" if beats is False else "")


def table(report: dict) -> str:
    """The report (score.json) as one ranked Markdown table: deletion and insertion under the
    ranking perturbation, then under each other one measured (`also`)."""
    loc = bool(report["baselines"]["localization"])
    main = report["perturbation"]
    others = list(report["baselines"].get("faithfulness_by_perturbation", {}))
    head = ["rank", "method", f"deletion AUC ↓ {main}", f"insertion AUC ↑ {main}"]
    for p in others:
        head += [f"deletion AUC ↓ {p}", f"insertion AUC ↑ {p}"]
    head += ["ρ all random", "randomisation", "ρ vs runner-up", "class"]
    if loc:
        head += ["mass in mask ↑", "pointing ↑"]
    head.append("does not beat")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in report["ranking"]["order"]:
        m = report["methods"][name]
        f, r = m["faithfulness"], m["randomization"]
        cls = m.get("class_sensitivity", {})
        cells = [str(m["rank"]), name, faith(f["deletion_auc"], f, "deletion"),
                 faith(f["insertion_auc"], f, "insertion")]
        for p in others:
            g = m["faithfulness_by_perturbation"][p]
            cells += [faith(g["deletion_auc"], g, "deletion"),
                      faith(g["insertion_auc"], g, "insertion")]
        cells += [rho(r["steps"][-1]["rho"], report["images"] * report["randomization_draws"]),
                  r["verdict"], rho(cls.get("runner-up", {}).get("rho"), report["images"]),
                  cls.get("verdict", "—")]
        if loc:
            cells += [ci(m["localization"]["mass_in_mask"]), ci(m["localization"]["pointing"])]
        cells.append("; ".join(f"{b} ({', '.join(w)})" for b, w in m["not_beaten"].items())
                     or "—")
        rows.append("| " + " | ".join(cells) + " |")
    for b, f in report["baselines"]["faithfulness"].items():
        cells = ["", f"*{b}*", faith(f["deletion_auc"], f, "deletion"),
                 faith(f["insertion_auc"], f, "insertion")]
        for p in others:
            g = report["baselines"]["faithfulness_by_perturbation"][p][b]
            cells += [faith(g["deletion_auc"], g, "deletion"),
                      faith(g["insertion_auc"], g, "insertion")]
        cells += ["", "", "", ""]
        if loc:
            lb = report["baselines"]["localization"].get(b)
            cells += [ci(lb["mass_in_mask"]), ci(lb["pointing"])] if lb else ["", ""]
        rows.append("| " + " | ".join(cells + [""]) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt")
    ap.add_argument("--data", default=None)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--method", action="append", help=f"default: {', '.join(METHODS)}")
    ap.add_argument("--perturbation", default="drop", help="the one that ranks (drop or grey)")
    ap.add_argument("--also", default="grey",
                    help="comma-separated further perturbations measured on the same orders")
    ap.add_argument("--from-json", help="print the table of an existing score.json")
    ap.add_argument("--save-json", help="also write the report (score.json's content) there")
    args = ap.parse_args()
    if args.from_json:
        print(table(json.loads(Path(args.from_json).read_text())))
        return
    if not args.ckpt:
        ap.error("give --ckpt (or --from-json)")
    methods = args.method or METHODS
    if importlib.util.find_spec("captum") is None:
        left = [m for m in methods if m in NEEDS_CAPTUM]
        methods = [m for m in methods if m not in NEEDS_CAPTUM]
        if left:
            print(f"left out {', '.join(left)}: pip install 'vitscope[captum]'")
    from vitscope.analyze.registry import discover
    from vitscope.score.run import jsonable, score_checkpoint
    entries = discover().select(methods)
    here = os.getcwd()
    ckpt = Path(args.ckpt).resolve()
    with tempfile.TemporaryDirectory(prefix="vitscope-leaderboard-") as tmp:
        os.chdir(tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        report = score_checkpoint(ckpt, entries, images=args.images, data=args.data,
                                  device="cpu", draws=args.draws,
                                  perturbation=args.perturbation,
                                  also=[p for p in args.also.split(",") if p],
                                  echo=lambda s: print("  " + s, flush=True))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        os.chdir(here)
    load = os.getloadavg()
    print(f"\n{ckpt.name}: {report['images']} images of {report['data']}, "
          f"{report['randomization_draws']} weight draws, {report['perturbation']}\n")
    print(table(jsonable(report)))
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(
            jsonable({k: v for k, v in report.items() if k != "_arrays"}), indent=1))
    print("\nseconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()))
    print(f"\n{wall:.0f} s wall, {cpu:.0f} CPU s; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; {os.cpu_count()} CPUs visible")


if __name__ == "__main__":
    main()
