#!/usr/bin/env python3
"""Per-conv GFLOP/s of a training or inference step, read off `vidgrad bench --profile`.

    build/tools/vidgrad bench --model sevnet_g8 --batch 4 --frames 8 --size 112 \\
        --threads 2 --profile > profile.txt
    python3 bench/profile_flops.py profile.txt --peak 203 [--waste 20]

Each conv line of the profile ("conv3d [bn-relu] KTxKHxKW [gwG] [s(..)] CIN->COUT @HOxWO
[input grad|weight grad]", its ms a step and calls) gets its FLOPs counted as the direct
conv's, 2 x COUT x (CIN / groups) x KT x KH x KW per output position (the same for its
input and weight gradients), and its rate in GFLOP/s and as a share of --peak (the FMA
peak of the same threads, bench/fma_peak). The 3x1x1 convs run by Winograd F(4, 3) with
half the direct multiplications, so their direct-counted rate can pass 100%; the floor
below counts them at --winograd times the direct FLOPs (0.5; 1 with --no-winograd runs).

Then the step's arithmetic floor: every conv at --peak, the rest of the step (batch norm,
pools, SGD, ...) as measured. --waste N lists the N convs furthest above their floor.

--peer R (the peer's clips/s for the same configuration, from bench/compare_cpu.sh or
bench/pytorch_sevnet.py) adds what --target times its speed (default 2) asks of this
step: the longest step that reaches it, and, with the rest of the step as measured, the
share of --peak the convs would need on average (over 100%: out of reach with these
FLOPs). It also prints the share of --peak the peer's convs reach at least, counting
them at the direct FLOPs (oneDNN's 3x1x1 convs do all of them) against the peer's whole
step.
"""
import argparse
import re
import sys

LINE = re.compile(r"(.*?)\s+([\d.]+)\s+([\d.]+)%\s+(\d+)$")
HEAD = re.compile(r"batch (\d+), (\d+)x(\d+)x(\d+)")


def conv_flops(name, batch, frames):
    """Direct FLOPs of one call of a profile line's conv, and its temporal kernel size."""
    kt, kh, kw = map(int, re.search(r"(\d+)x(\d+)x(\d+) ", name + " ").groups())
    ci, co = map(int, re.search(r"(\d+)->(\d+)", name).groups())
    ho, wo = map(int, re.search(r"@(\d+)x(\d+)", name).groups())
    g = re.search(r"gw(\d+)", name)
    cg = int(g.group(1)) if g else ci
    st = re.search(r"s\((\d+),\d+,\d+\)", name)
    to = frames // (int(st.group(1)) if st else 1)
    return 2.0 * co * cg * kt * kh * kw * batch * to * ho * wo, kt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile", help="output of `vidgrad bench ... --profile` ('-': standard input)")
    ap.add_argument("--peak", type=float, required=True, help="FMA peak of the same threads, GFLOP/s (bench/fma_peak)")
    ap.add_argument("--winograd", type=float, default=0.5, help="multiplications of the 3x1x1 convs per direct one")
    ap.add_argument("--waste", type=int, default=0, help="list the N convs furthest above their floor")
    ap.add_argument("--peer", type=float, help="the peer's clips/s for the same configuration")
    ap.add_argument("--target", type=float, default=2.0, help="speed-up over the peer to bound (with --peer)")
    args = ap.parse_args()
    if args.peak <= 0:
        sys.exit(f"profile_flops: --peak must be positive, got {args.peak}")
    if args.peer is not None and args.peer <= 0:
        sys.exit(f"profile_flops: --peer must be positive clips/s, got {args.peer}")
    if args.target <= 0:
        sys.exit(f"profile_flops: --target must be positive, got {args.target}")
    try:
        if args.profile == "-":
            text = sys.stdin.read().splitlines()
        else:
            with open(args.profile) as f:
                text = f.read().splitlines()
    except OSError as e:
        sys.exit(f"profile_flops: cannot read {args.profile}: {e.strerror}")
    head = next(filter(None, map(HEAD.search, text)), None)
    if head is None:
        sys.exit(f"profile_flops: {args.profile}: no 'batch B, TxHxW' line; is it `vidgrad bench --profile` output?")
    batch, frames = int(head.group(1)), int(head.group(2))
    step = conv_ms = floor_ms = direct_ms = 0.0
    rows = []
    for line in text:
        m = LINE.match(line.rstrip())
        if not m:
            continue
        name, ms, calls = m.group(1), float(m.group(2)), int(m.group(4))
        step += ms
        # "... backward" lines are the autograd nodes' own bookkeeping, not conv arithmetic.
        if not name.startswith("conv3d") or name.endswith("backward"):
            continue
        flops, kt = conv_flops(name, batch, frames)
        flops *= calls
        rate = flops / ms / 1e6
        at_peak = flops / args.peak / 1e6  # ms at the peak, direct FLOPs
        floor = at_peak * (args.winograd if kt == 3 else 1.0)
        conv_ms += ms
        floor_ms += floor
        direct_ms += at_peak
        rows.append((name, ms, rate, floor))
    if not rows:
        sys.exit(f"profile_flops: {args.profile}: no conv3d lines")
    print(f"{'conv (direct FLOPs)':64s} {'ms/step':>8s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for name, ms, rate, _ in rows:
        print(f"{name:64s} {ms:8.2f} {rate:8.0f} {100 * rate / args.peak:7.0f}%")
    print(f"\nstep {step:.1f} ms: convs {conv_ms:.1f} ms, the rest {step - conv_ms:.1f} ms")
    print(f"convs at {args.peak:g} GFLOP/s (3x1x1 at {args.winograd:g} of the direct FLOPs): {floor_ms:.1f} ms; "
          f"step floor {floor_ms + step - conv_ms:.1f} ms; above the floor {conv_ms - floor_ms:.1f} ms")
    if args.peer is not None:
        peer_step = 1e3 * batch / args.peer
        need = peer_step / args.target
        budget = need - (step - conv_ms)  # for the convs, the rest of the step as measured
        print(f"\n{args.target:g}x the peer's {args.peer:g} clips/s ({peer_step:.1f} ms a step of {batch}): "
              f"a step of at most {need:.1f} ms", end="")
        if budget <= 0:
            print(f", less than the rest of the step ({step - conv_ms:.1f} ms): out of reach")
        else:
            share = floor_ms / budget
            print(f": the convs in {budget:.1f} ms, at {100 * share:.0f}% of the peak on average "
                  f"(now {100 * floor_ms / conv_ms:.0f}%){': out of reach' if share > 1 else ''}")
        print(f"the peer's convs at the direct FLOPs take {direct_ms:.1f} ms at the peak: at least "
              f"{100 * direct_ms / peer_step:.0f}% of the peak over its whole step")
    if args.waste:
        print(f"\nfurthest above their floor:")
        for name, ms, _, floor in sorted(rows, key=lambda r: r[3] - r[1])[: args.waste]:
            print(f"{name:64s} {ms:8.2f} ms, floor {floor:6.2f}, above {ms - floor:5.2f}")


if __name__ == "__main__":
    main()
