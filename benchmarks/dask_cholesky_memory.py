"""Peak memory of ``dask.array.linalg.cholesky`` on a Zarr matrix (the alternative to
gpmargin.distributed.blocked that was measured and not used).

    python benchmarks/dask_cholesky_memory.py --n 8192 --chunk 1024

Writes a symmetric positive definite ``X X^T / 256 + I`` (both triangles, as dask needs) to a
temporary Zarr array in one process, then factorises it with dask's threaded scheduler into another
Zarr array in a fresh process and prints the wall time and the resident memory it added.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

WRITE = """
import sys, numpy as np, zarr
n, c, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
z = zarr.open_array(d + "/K.zarr", mode="w", shape=(n, n), chunks=(c, c), dtype="f8")
X = np.random.default_rng(0).standard_normal((n, 256))
for i in range(0, n, c):
    z[i:i + c] = X[i:i + c] @ X.T / 256 + np.eye(n)[i:i + c]
"""

FACTOR = """
import sys, time, resource, zarr, dask, dask.array as da
n, c, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
A = da.from_zarr(zarr.open_array(d + "/K.zarr", mode="r"))
t = time.perf_counter()
with dask.config.set(scheduler="threads", num_workers=2):
    da.linalg.cholesky(A, lower=True).to_zarr(d + "/L.zarr", overwrite=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"n={n} chunk={c}: dask.array.linalg.cholesky {time.perf_counter() - t:.1f} s, added "
      f"{(peak - base) / 2**20:.2f} GiB of RSS = {(peak - base) * 1024 / (n * n * 8):.2f} x the matrix "
      f"({n * n * 8 / 2**30:.2f} GiB)")
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--chunk", type=int, default=1024)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for code in (WRITE, FACTOR):
            subprocess.run([sys.executable, "-c", code, str(args.n), str(args.chunk), d], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
