"""NumPy / SciPy side of `cargo bench -p tessera-storage --bench kernels`.

Started once by benches/kernels.rs and kept alive, so its data is built once and the two
sides can take turns (never running at the same time). Protocol, one line each way:
reads `<workload> <runs>`, times that workload `runs` times, and prints
`{"workload": ..., "seconds": best}` as JSON. The first line it prints is the versions.
"""

import json
import sys
import time

import numpy as np
import scipy
import scipy.sparse as sp

rng = np.random.default_rng(42)
cache = {}


def data(name):
    if name not in cache:
        if name == "gemm":
            n = 4096
            cache[name] = (rng.standard_normal((n, n)), rng.standard_normal((n, n)))
        elif name == "x":
            cache[name] = (rng.standard_normal((1_000_000, 100)), rng.standard_normal((100, 1)))
        elif name == "spmm":
            n = 100_000
            a = sp.random(n, n, density=0.001, format="csr", random_state=rng, dtype=np.float64)
            cache[name] = (a, rng.standard_normal((n, 16)))
    return cache[name]


def workload(name):
    if name == "gemm":
        a, b = data("gemm")
        return lambda: a @ b
    if name == "tsmm":
        # NumPy sees x.T @ x and calls BLAS syrk (one triangle), as Tessera's tsmm does.
        x, _ = data("x")
        return lambda: x.T @ x
    if name == "mmchain":
        x, v = data("x")
        return lambda: x.T @ (x @ v)
    if name == "spmm":
        a, b = data("spmm")
        return lambda: a @ b
    raise SystemExit(f"unknown workload {name}")


def main():
    print(json.dumps({"numpy": np.__version__, "scipy": scipy.__version__}), flush=True)
    for line in sys.stdin:
        name, runs = line.split()
        f = workload(name)
        best = float("inf")
        for _ in range(int(runs)):
            t = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t)
        print(json.dumps({"workload": name, "seconds": best}), flush=True)


if __name__ == "__main__":
    main()
