#!/usr/bin/env python3
"""Draws the cluster benchmark's chart: time against number of files, log
scales, one line per tool, one panel per piece of work.

Usage: chart.py cluster.json out.png (written by benches/cluster.rs).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WORKS = [
    ("first", "first sync"),
    ("no_change", "no-change sync"),
    ("one_change", "one changed file"),
    ("pct1_change", "1% of files changed"),
    ("rename_dir", "directory of 1,000 files renamed"),
]
TOOLS = ["snapsync", "csync2", "rsync", "unison", "syncthing"]
COLORS = dict(zip(TOOLS, ["C0", "C1", "C2", "C3", "C4"]))
FLOORS = {"first": ("copy_two_s", "floor: cp -a to two"), "no_change": ("lstat_s", "floor: parallel lstat")}


def main():
    data = json.load(open(sys.argv[1]))
    trees = sorted(data.get("trees", []), key=lambda t: t["files"])
    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    for ax, (key, title) in zip(axes.flat, WORKS):
        for tool in TOOLS:
            xs, ys = [], []
            for t in trees:
                y = t["tools"].get(tool, {}).get("works", {}).get(key, {}).get("median_s")
                if y:
                    xs.append(t["files"])
                    ys.append(y)
            if xs:
                ax.plot(xs, ys, marker="o", label=tool, color=COLORS[tool])
        if key in FLOORS:
            fk, label = FLOORS[key]
            pts = [(t["files"], t["floors"].get(fk)) for t in trees if t["floors"].get(fk)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--", marker="x", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("files")
        ax.set_ylabel("seconds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    # The last panel: the large file's one-byte edit, time and bytes.
    ax = axes.flat[5]
    big = data.get("big_file", {})
    names, times = [], []
    for tool in TOOLS:
        s = big.get("tools", {}).get(tool, {}).get("works", {}).get("one_byte_edit", {}).get("median_s")
        if s:
            names.append(tool)
            times.append(s)
    ax.bar(names, times, color=[COLORS[n] for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.set_title("one-byte edit in a %d MiB file" % (big.get("bytes", 0) >> 20))
    mode = "quick mode" if data.get("quick") else "full run"
    fig.suptitle("snapsync and peers, %s, %s CPUs" % (mode, data.get("machine", {}).get("cpus", "?")))
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=80)


if __name__ == "__main__":
    main()
