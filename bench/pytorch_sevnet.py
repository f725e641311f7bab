#!/usr/bin/env python3
"""SEVNet in PyTorch, defined exactly as vidgrad's models/sevnet.cpp, timed on synthetic
input: the peer that bench/compare_cpu.sh measures vidgrad against in the same run.
PyTorch is used here only, never inside vidgrad.

  python3 bench/pytorch_sevnet.py --model sevnet_g8 --batch 1 --frames 16 --size 224 --threads 2 [--inference]
Prints one line: "<clips/s> clips/s, peak RSS <MiB> MiB". With --profile, the timed steps
run under torch.profiler instead and it prints PyTorch's time per op and input shape
(self CPU time, all timed steps together), to set beside `vidgrad bench --profile`; the
profiler adds to the step (about 40% at batch 4 8x112 training on the Intel VM).
"""
import argparse
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """SEV module (or the R(2+1)D / R3D ablation block); downsample modules halve H, W
    and concatenate a pooled 1x1x1 shortcut, doubling the channels."""

    def __init__(self, c, downsample, group_width, block="sev", se=False):
        super().__init__()
        s = (1, 2, 2) if downsample else (1, 1, 1)
        if block == "sev":
            specs = [(c, c, (1, 1, 1), (1, 1, 1), (0, 0, 0), 1),
                     (c, c, (1, 3, 3), s, (0, 1, 1), c // group_width),
                     (c, c, (3, 1, 1), (1, 1, 1), (1, 0, 0), 1)]
        elif block == "r2plus1d":
            m = c // 2
            specs = [(c, m, (1, 1, 1), (1, 1, 1), (0, 0, 0), 1), (m, m, (1, 3, 3), s, (0, 1, 1), 1),
                     (m, c, (3, 1, 1), (1, 1, 1), (1, 0, 0), 1)]
        else:
            m = round(c / 2.6)
            specs = [(c, m, (1, 1, 1), (1, 1, 1), (0, 0, 0), 1), (m, m, (3, 3, 3), s, (1, 1, 1), 1),
                     (m, c, (1, 1, 1), (1, 1, 1), (0, 0, 0), 1)]
        for tag, (i, o, k, st, p, g) in zip("abc", specs):
            setattr(self, "conv_" + tag, nn.Conv3d(i, o, k, st, p, groups=g, bias=False))
            setattr(self, "bn_" + tag, nn.BatchNorm3d(o))
        self.se = None
        if se:
            self.se = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Conv3d(c, c // 4, 1), nn.ReLU(),
                                    nn.Conv3d(c // 4, c, 1), nn.Sigmoid())
        self.downsample = downsample
        if downsample:
            self.pool = nn.AvgPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
            self.shortcut_conv = nn.Conv3d(c, c, 1, bias=False)
            self.shortcut_bn = nn.BatchNorm3d(c)

    def forward(self, x):
        h = F.relu(self.bn_a(self.conv_a(x)))
        h = F.relu(self.bn_b(self.conv_b(h)))
        h = self.bn_c(self.conv_c(h))
        if self.se is not None:
            h = h * self.se(h)
        if not self.downsample:
            return F.relu(x + h)
        return F.relu(torch.cat([h, self.shortcut_bn(self.shortcut_conv(self.pool(x)))], 1))


class SevNet(nn.Module):
    def __init__(self, group_width=8, classes=174, block="sev", se=False, depths=(3, 4, 6, 3), dropout=0.5):
        super().__init__()
        c = 4 * group_width
        self.stem = nn.Sequential(nn.Conv3d(3, c, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(c),
                                  nn.ReLU(), nn.Conv3d(c, c, (3, 1, 1), 1, (1, 0, 0), bias=False),
                                  nn.BatchNorm3d(c), nn.ReLU())
        stages = []
        for d in depths:
            blocks = []
            for i in range(d):
                blocks.append(Block(c, i == 0, group_width, block, se))
                if i == 0:
                    c *= 2
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(self.dropout(x.mean((2, 3, 4))))


def make(name, classes):
    block, rest = ("sev", name[len("sevnet_g"):]) if name.startswith("sevnet_g") else \
        ("r2plus1d", name[len("r2plus1d_g"):]) if name.startswith("r2plus1d_g") else ("r3d", name[len("r3d_g"):])
    se = rest.endswith("_se")
    return SevNet(int(rest[:-3] if se else rest), classes, block, se)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="sevnet_g8")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=174)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--inference", action="store_true")
    ap.add_argument("--channels-last", action="store_true", help="channels_last_3d memory format")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 in cuDNN convolutions and GEMMs (CUDA)")
    ap.add_argument("--profile", action="store_true", help="print the time per op and input shape (torch.profiler)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cuda = a.device.startswith("cuda")
    if cuda:
        # The same search vidgrad makes per shape (Note [conv plans]); TF32 only when asked, as in vidgrad.
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
    net = make(a.model, a.classes).to(a.device)
    x = torch.randn(a.batch, 3, a.frames, a.size, a.size).to(a.device)
    y = torch.randint(0, a.classes, (a.batch,)).to(a.device)
    if a.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    times = []
    if a.inference:
        net.eval()
    prof = None
    for i in range(a.warmup + a.steps):
        if a.profile and i == a.warmup:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            prof.__enter__()
        if cuda:
            if i == a.warmup:
                torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t = time.perf_counter()
        if a.inference:
            with torch.no_grad():
                net(x)
        else:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=80, max_name_column_width=40, max_shapes_column_width=100))
    med = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = f", peak device memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else ""
    print(f"{a.batch / med:.3f} clips/s, peak RSS {rss:.0f} MiB, median {med:.4f} s/step{extra}")


if __name__ == "__main__":
    main()
