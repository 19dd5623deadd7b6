#!/usr/bin/env python3
"""Static checks of the compiled CUDA kernels, with no GPU: every kernel within its register
budget, none spilling, and none with fewer 16-byte global loads or stores than its budget names,
on sm_80 and sm_90 (scripts/kernel-budgets.tsv).

    python3 scripts/check-kernels.py [BUILD_OUT_DIR]

BUILD_OUT_DIR is the build script's output folder of a `--features cuda` build (the newest
target/*/build/electra-*/out holding a ptxas-report.txt when not given). The registers and spills
come from ptxas' report, which build.rs writes there; the memory instructions from the SASS of
the fatbins, disassembled by cuobjdump (scripts/install-sass-tools.sh). Exits 1, naming each
kernel and what it broke, when a check fails."""

import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("sm_80", "sm_90")
WIDE_LOAD = re.compile(r"\b(LDG|LDGSTS)\.E[.A-Z0-9]*\.128\b")
WIDE_STORE = re.compile(r"\bSTG\.E[.A-Z0-9]*\.128\b")


def build_out():
    if len(sys.argv) > 1:
        return sys.argv[1]
    reports = glob.glob(os.path.join(ROOT, "target/*/build/electra-*/out/ptxas-report.txt"))
    if not reports:
        sys.exit("check-kernels: no ptxas-report.txt under target/; build with --features cuda")
    return os.path.dirname(max(reports, key=os.path.getmtime))


def ptxas_report(out):
    """(kernel, arch) -> (registers, stack bytes, spill stores, spill loads)."""
    rows = {}
    for line in open(os.path.join(out, "ptxas-report.txt")):
        fields = line.split()
        if line.startswith("#") or not fields or fields[0] == "file":
            continue
        _, kernel, arch, regs, stack, spill_st, spill_ld = fields[:7]
        rows[(kernel, arch)] = (int(regs), int(stack), int(spill_st), int(spill_ld))
    return rows


def wide_accesses(out, cuobjdump):
    """(kernel, arch) -> (16-byte global loads, 16-byte global stores) in its SASS."""
    counts = {}
    for fatbin in sorted(glob.glob(os.path.join(out, "*.fatbin"))):
        for arch in ARCHS:
            sass = subprocess.run([cuobjdump, "-sass", "-arch", arch, fatbin], check=True,
                                  capture_output=True, text=True).stdout
            kernel = None
            for line in sass.splitlines():
                m = re.search(r"Function : (\S+)", line)
                if m:
                    kernel = m.group(1)
                    counts[(kernel, arch)] = [0, 0]
                elif kernel:
                    counts[(kernel, arch)][0] += bool(WIDE_LOAD.search(line))
                    counts[(kernel, arch)][1] += bool(WIDE_STORE.search(line))
    return counts


def budgets():
    rows = {}
    for line in open(os.path.join(ROOT, "scripts/kernel-budgets.tsv")):
        if line.startswith("#") or not line.strip():
            continue
        kernel, max_regs, loads, stores = line.split()
        rows[kernel] = (int(max_regs), int(loads), int(stores))
    return rows


def main():
    out = build_out()
    tools = subprocess.run(["bash", os.path.join(ROOT, "scripts/install-sass-tools.sh")],
                           check=True, capture_output=True, text=True).stdout.strip()
    report, wide, budget = ptxas_report(out), wide_accesses(out, os.path.join(tools, "cuobjdump")), budgets()
    kernels = sorted({k for k, _ in report})
    problems = []
    for k in sorted(set(budget) - set(kernels)):
        problems.append(f"{k}: has a budget but no such kernel was compiled")
    print(f"{'kernel':<32} {'arch':<6} {'regs':>4} {'budget':>6} {'ld128':>5} {'st128':>5}")
    for k in kernels:
        if k not in budget:
            problems.append(f"{k}: no budget in scripts/kernel-budgets.tsv")
            continue
        max_regs, min_loads, min_stores = budget[k]
        for arch in ARCHS:
            if (k, arch) not in report:
                problems.append(f"{k}: not in ptxas' report for {arch}")
                continue
            regs, _, spill_st, spill_ld = report[(k, arch)]
            loads, stores = wide.get((k, arch), (0, 0))
            print(f"{k:<32} {arch:<6} {regs:>4} {max_regs:>6} {loads:>5} {stores:>5}")
            if spill_st or spill_ld:
                problems.append(f"{k} ({arch}): spills ({spill_st} bytes stored, {spill_ld} loaded)")
            if regs > max_regs:
                problems.append(f"{k} ({arch}): {regs} registers, over its budget of {max_regs}")
            if loads < min_loads or stores < min_stores:
                problems.append(f"{k} ({arch}): {loads} 16-byte global loads and {stores} stores "
                                f"in its SASS, fewer than its budget's {min_loads} and {min_stores}: "
                                "a vector access was split (or the budget is stale)")
    for p in problems:
        print("FAILED:", p)
    if problems:
        sys.exit(1)
    print(f"check-kernels: {len(kernels)} kernels on {', '.join(ARCHS)} within their budgets "
          f"({out})")


main()
