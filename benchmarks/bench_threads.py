"""What a trial's process sees of the CPU, and how fast torch trains there: run it natively and in a worker container.

Prints the facts that decide a CPU trial's speed (torch's threads and CPU capability, the CPUs the process may use,
the container's CPU quota, its niceness, OMP_NUM_THREADS) and the median time of a forward + backward step of the
tiny backbone's convolutions on a batch of 8 x 128 px (``--threads``: torch's threads; default: torch's own choice).
Run two at once (natively, or in two worker containers) to see what sharing the cores costs.

    python benchmarks/bench_threads.py [--threads 2] [--repeats 20]
    docker run --rm ghm-sweep:latest python benchmarks/bench_threads.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn


def cpu_quota() -> str:
    for path in (Path("/sys/fs/cgroup/cpu.max"), Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")):
        if path.exists():
            return f"{path}: {path.read_text().strip()}"
    return "no cgroup CPU quota file"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"usable CPUs {len(os.sched_getaffinity(0))} of {os.cpu_count()}; {cpu_quota()}; nice {os.nice(0)}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 128, 3, 1, 1))
    batch = torch.randn(8, 3, 128, 128)
    times = []
    for step in range(args.repeats + 3):
        started = time.perf_counter()
        model(batch).square().mean().backward()
        if step >= 3:  # after warm-up
            times.append(time.perf_counter() - started)
    print(f"step: median {statistics.median(times) * 1000:.1f} ms over {args.repeats}", flush=True)


if __name__ == "__main__":
    main()
