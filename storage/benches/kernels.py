"""NumPy / SciPy side of `cargo bench -p tessera-storage --bench kernels`.

Runs the same workloads as benches/kernels.rs on the same machine and prints one JSON
object per line: {"workload": name, "seconds": best of the runs}. Arguments are workload
names to run (all when none are given).
"""

import json
import sys
import time

import numpy as np
import scipy
import scipy.sparse as sp


def best_of(runs, f):
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def emit(workload, seconds):
    print(json.dumps({"workload": workload, "seconds": seconds}), flush=True)


def main():
    wanted = set(sys.argv[1:])
    rng = np.random.default_rng(42)
    print(json.dumps({"numpy": np.__version__, "scipy": scipy.__version__}), flush=True)

    if not wanted or "gemm" in wanted:
        n = 4096
        a = rng.standard_normal((n, n))
        b = rng.standard_normal((n, n))
        emit("gemm", best_of(3, lambda: a @ b))
        del a, b

    if not wanted or wanted & {"tsmm", "mmchain"}:
        x = rng.standard_normal((1_000_000, 100))
        v = rng.standard_normal((100, 1))
        if not wanted or "tsmm" in wanted:
            # NumPy sees x.T @ x and calls BLAS syrk (one triangle), like Tessera's tsmm.
            emit("tsmm", best_of(5, lambda: x.T @ x))
        if not wanted or "mmchain" in wanted:
            emit("mmchain", best_of(5, lambda: x.T @ (x @ v)))
        del x

    if not wanted or "spmm" in wanted:
        n = 100_000
        a = sp.random(n, n, density=0.001, format="csr", random_state=rng, dtype=np.float64)
        b = rng.standard_normal((n, 16))
        emit("spmm", best_of(5, lambda: a @ b))


if __name__ == "__main__":
    main()
