#!/usr/bin/env python3
"""PyTorch peer of `sasprune bench`: the same measurements in PyTorch eager f32 (TF32 off) on
whatever device PyTorch has (CUDA, ROCm, MPS, else CPU), printed as a table and appended as JSON
lines in the bench's schema (name, value, unit, ms, adapter, backend, timing, ...) plus
"peer": "pytorch", so both files merge and compare line by line. The ResNet-32 rows named
"... mixed" are PyTorch's automatic mixed precision, the peer of `--precision mixed`: autocast
to f16, GradScaler, channels-last memory format (CUDA/ROCm and MPS; skipped on the CPU).

    python3 benches/peers/pytorch_resnet32.py [--out bench.jsonl] [--quick] [--filter TEXT]

Same model (CIFAR ResNet-32, option-A shortcuts, as src/models/resnet.rs), batch sizes, GEMM and
convolution shapes as `sasprune bench`. Differences on purpose: the training step's input is
already on the device (sasprune's bench also assembles and uploads the batch each step), and
`cudnn.benchmark` is off unless --cudnn-benchmark is given.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or cin != planes) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class ResNet(nn.Module):
    def __init__(self, n=5, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for stage, planes in enumerate([16, 32, 64]):
            for i in range(n):
                blocks.append(Block(cin, planes, 2 if stage > 0 and i == 0 else 1))
                cin = planes
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def pick_device():
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        backend = "ROCm" if getattr(torch.version, "hip", None) else "CUDA"
        return torch.device("cuda"), name, backend
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps"), "Apple MPS", "MPS"
    return torch.device("cpu"), "CPU", "cpu"


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elif dev.type == "mps":
        torch.mps.synchronize()


def time_median(dev, runs, f):
    """Median seconds of `runs` calls of f after one warm-up (CUDA events on CUDA/ROCm)."""
    f()
    sync(dev)
    times = []
    for _ in range(runs):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            f()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            f()
            sync(dev)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def conv_shapes(batch):
    g = lambda cin, h, cout, s: dict(n=batch, cin=cin, h=h, cout=cout, stride=s)
    return [("conv 3->16 32px", g(3, 32, 16, 1)), ("conv 16->16 32px", g(16, 32, 16, 1)),
            ("conv 16->32 32px/2", g(16, 32, 32, 2)), ("conv 32->32 16px", g(32, 16, 32, 1)),
            ("conv 32->64 16px/2", g(32, 16, 64, 2)), ("conv 64->64 8px", g(64, 8, 64, 1))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench.jsonl")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--filter", default=None)
    ap.add_argument("--cudnn-benchmark", action="store_true")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    dev, adapter, backend = pick_device()
    quick = args.quick
    runs, steps = (3, 3) if quick else (5, 20)
    batch = 16 if quick else 128
    driver = torch.version.cuda or getattr(torch.version, "hip", None) or ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    timing = "device, CUDA events, median" if dev.type == "cuda" else "host, call + synchronize, median"
    step_timing = "device, CUDA events around consecutive steps" if dev.type == "cuda" else "host, consecutive steps then one wait"
    out = open(args.out, "a")
    print(f"adapter: {adapter} (PyTorch {torch.__version__}, {backend} {driver}, TF32 off, cudnn.benchmark {args.cudnn_benchmark})")
    print(f"{'measurement':<46} {'ms':>10} {'rate':>12}")

    def emit(name, seconds, work, unit, t=timing, **extra):
        line = dict(name=name, value=work / seconds, unit=unit, ms=seconds * 1e3, adapter=adapter,
                    device_type=dev.type, backend=backend, driver=driver,
                    driver_info=f"PyTorch {torch.__version__}", timing=t, peer="pytorch",
                    tf32=False, cudnn_benchmark=args.cudnn_benchmark, commit=commit,
                    unix_time=int(time.time()), **extra)
        print(f"{name:<46} {seconds * 1e3:>10.3f} {work / seconds:>12.2f} {unit}")
        out.write(json.dumps(line) + "\n")
        out.flush()

    wants = lambda name: args.filter is None or args.filter in name
    for s in ([256] if quick else [1024, 4096]):
        name = f"gemm {s}x{s}x{s}"
        if wants(name):
            a, b = torch.rand(s, s, device=dev) * 2 - 1, torch.rand(s, s, device=dev) * 2 - 1
            emit(name, time_median(dev, runs, lambda: a @ b), 2 * s**3 / 1e9, "GFLOP/s")
    for label, g in conv_shapes(batch):
        x = torch.randn(g["n"], g["cin"], g["h"], g["h"], device=dev)
        w = torch.randn(g["cout"], g["cin"], 3, 3, device=dev)
        y = F.conv2d(x, w, stride=g["stride"], padding=1)
        dy = torch.randn_like(y)
        macs = y.numel() * g["cin"] * 9
        mnk = f"{g['cout']}x{y.numel() // g['cout']}x{g['cin'] * 9}"
        kernels = {
            "forward": lambda: F.conv2d(x, w, stride=g["stride"], padding=1),
            "grad-input": lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, stride=g["stride"], padding=1),
            "grad-weight": lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=g["stride"], padding=1),
        }
        for kind, f in kernels.items():
            name = f"{label} b{batch} {kind}"
            if wants(name):
                emit(name, time_median(dev, runs, f), 2 * macs / 1e9, "GFLOP/s", gemm_mnk=mnk)
    for n, c, side in ([(batch, 32, 16)] if quick else [(batch, 32, 16), (500, 16, 32)]):
        shape = f"b{n} {c}x{side}x{side}"
        gb = n * c * side * side * 4 / 1e9
        bn = nn.BatchNorm2d(c).to(dev)
        x = torch.randn(n, c, side, side, device=dev, requires_grad=True)
        dy = torch.randn(n, c, side, side, device=dev)
        if wants(f"batchnorm forward {shape}"):
            with torch.no_grad():
                emit(f"batchnorm forward {shape}", time_median(dev, runs, lambda: bn(x)), 3 * gb, "GB/s")
        if wants(f"batchnorm backward {shape}"):
            emit(f"batchnorm backward {shape}", time_median(dev, runs, lambda: bn(x).backward(dy)),
                 8 * gb, "GB/s", includes="forward")
    name = "elementwise scale 64M"
    if wants(name):
        big = torch.rand(1 << 26, device=dev)
        emit(name, time_median(dev, runs, lambda: big * 0.5), 2 * 4 * (1 << 26) / 1e9, "GB/s")
    name = f"softmax cross-entropy b{batch} x1000"
    if wants(name):
        logits = torch.randn(batch, 1000, device=dev, requires_grad=True)
        labels = torch.arange(batch, device=dev) * 7 % 1000
        emit(name, time_median(dev, runs, lambda: F.cross_entropy(logits, labels).backward()),
             4 * 4 * batch * 1000 / 1e9, "GB/s", includes="forward and backward")
    step_batches = [16] if quick else [128, 256]
    for b in step_batches:
        if not (wants(f"resnet32 train step b{b}") or wants(f"resnet32 eval b{b}")):
            continue
        model = ResNet().to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        x = torch.randn(b, 3, 32, 32, device=dev)
        y = torch.randint(0, 10, (b,), device=dev)

        def train_step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        def many(f, k):
            def run():
                for _ in range(k):
                    f()
            return run

        model.train()
        t = time_median(dev, 3, many(train_step, steps))
        emit(f"resnet32 train step b{b}", t, steps * b, "images/s", step_timing)
        model.eval()
        with torch.no_grad():
            t = time_median(dev, 3, many(lambda: model(x), steps))
        emit(f"resnet32 eval b{b}", t, steps * b, "images/s", step_timing)
    b = 16 if quick else 500
    if wants(f"resnet32 eval b{b}") and b not in step_batches:
        model = ResNet().to(dev).eval()
        x = torch.randn(b, 3, 32, 32, device=dev)
        with torch.no_grad():
            t = time_median(dev, 3, lambda: [model(x) for _ in range(steps)])
        emit(f"resnet32 eval b{b}", t, steps * b, "images/s", step_timing)
    amp_rows(dev, wants, emit, steps, step_batches, [] if b in step_batches else [b], step_timing)
    print(f"results appended to {args.out}")


def amp_rows(dev, wants, emit, steps, step_batches, eval_batches, step_timing):
    """ResNet-32 training steps (at `step_batches`) and evaluation (at those and `eval_batches`)
    with automatic mixed precision: autocast to f16, GradScaler, channels-last weights and
    inputs; named like sasprune's mixed rows."""
    if dev.type not in ("cuda", "mps"):
        print("mixed precision rows: skipped (autocast to f16 needs CUDA, ROCm or MPS)")
        return
    for b in step_batches + eval_batches:
        train_name, eval_name = f"resnet32 train step b{b} mixed", f"resnet32 eval b{b} mixed"
        if not (wants(train_name) or wants(eval_name)):
            continue
        model = ResNet().to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        scaler = torch.amp.GradScaler(dev.type)
        x = torch.randn(b, 3, 32, 32, device=dev).to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (b,), device=dev)

        def train_step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        def evaluate():
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.float16):
                model(x)

        def many(f):
            return lambda: [f() for _ in range(steps)]

        extra = dict(precision="amp f16, GradScaler, channels_last")
        if b in step_batches and wants(train_name):
            model.train()
            emit(train_name, time_median(dev, 3, many(train_step)), steps * b, "images/s", step_timing, **extra)
        if wants(eval_name):
            model.eval()
            emit(eval_name, time_median(dev, 3, many(evaluate)), steps * b, "images/s", step_timing, **extra)


if __name__ == "__main__":
    sys.exit(main())
