#!/usr/bin/python3
"""Turns a run's metrics JSON lines (llm-train writes <checkpoint.dir>/metrics.jsonl) into a loss-curve
PNG: training loss per step and validation loss where measured. Uses Debian's python3-matplotlib.

    /usr/bin/python3 scripts/plot_metrics.py out/shakespeare-char/metrics.jsonl [-o curve.png] [--title T]
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("metrics")
    ap.add_argument("-o", "--output", default=None)
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    steps, losses, vsteps, vlosses = [], [], [], []
    with open(a.metrics) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                m = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"error: {a.metrics}:{n}: not JSON ({e.msg})")
            if "val_loss" in m:
                vsteps.append(m["step"])
                vlosses.append(m["val_loss"])
            elif "loss" in m:
                steps.append(m["step"])
                losses.append(m["loss"])
    if not steps:
        sys.exit(f"error: {a.metrics}: no training steps in the file")
    out = a.output or a.metrics.rsplit(".", 1)[0] + ".png"
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, losses, lw=0.8, alpha=0.7, label="train loss")
    if vsteps:
        ax.plot(vsteps, vlosses, "o-", lw=1.5, label="validation loss")
        best = min(range(len(vlosses)), key=vlosses.__getitem__)
        ax.annotate(f"{vlosses[best]:.3f}", (vsteps[best], vlosses[best]), textcoords="offset points", xytext=(0, -14))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(a.title or a.metrics)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
