"""Matrices to and from Tessera's coordinate form: an Arrow table ``(i, j, v)`` of the
non-zero cells, coordinates from 0. Whole columns at a time, never a Python loop over
cells."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import pyarrow as pa

CELL_SCHEMA = pa.schema([("i", pa.int64()), ("j", pa.int64()), ("v", pa.float64())])


def _scipy_sparse():
    """scipy.sparse if SciPy is installed (it is optional), else None."""
    try:
        import scipy.sparse
    except ImportError:
        return None
    return scipy.sparse


def is_sparse(array: Any) -> bool:
    """Whether ``array`` is a SciPy sparse matrix or array."""
    sparse = _scipy_sparse()
    return sparse is not None and sparse.issparse(array)


def to_cells(array: Any) -> Tuple[Tuple[int, int], pa.Table]:
    """The shape of a 2-D NumPy array (or anything ``np.asarray`` takes) or SciPy sparse
    matrix, and its stored cells as ``(i, j, v)``: every non-zero value, NaN included.
    Zeros (``-0.0`` too, as in SciPy) are not sent: a cell never written reads as 0.
    Values become float64, the one attribute type Tessera stores. Duplicate entries of
    a sparse matrix are summed, as SciPy does."""
    if is_sparse(array):
        coo = _scipy_sparse().coo_matrix(array, dtype=np.float64)  # a copy: we edit it
        coo.sum_duplicates()
        keep = _stored(coo.data)
        shape, i, j, v = coo.shape, coo.row[keep], coo.col[keep], coo.data[keep]
    else:
        dense = np.asarray(array, dtype=np.float64)
        if dense.ndim != 2:
            raise ValueError(f"put() takes a 2-D array; this one has shape {dense.shape}")
        i, j = np.nonzero(_stored(dense))
        shape, v = dense.shape, dense[i, j]
    table = pa.Table.from_arrays(
        [pa.array(i.astype(np.int64)), pa.array(j.astype(np.int64)), pa.array(v)],
        schema=CELL_SCHEMA,
    )
    return (int(shape[0]), int(shape[1])), table


def _stored(values: np.ndarray) -> np.ndarray:
    """Where ``values`` holds a value Tessera stores: non-zero, NaN too."""
    return values != 0


def _columns(cells: pa.Table):
    """The coordinates and values of a cell table, by position (an array's dimensions
    come first, then its attribute, whatever their names)."""
    return (
        cells.column(0).to_numpy().astype(np.int64, copy=False),
        cells.column(1).to_numpy().astype(np.int64, copy=False),
        cells.column(2).to_numpy().astype(np.float64, copy=False),
    )


def to_dense(cells: pa.Table, shape: Tuple[int, int]) -> np.ndarray:
    """A float64 ndarray of ``shape`` with the cells filled in, zeros elsewhere."""
    out = np.zeros(shape, dtype=np.float64)
    i, j, v = _columns(cells)
    out[i, j] = v
    return out


def to_csr(cells: pa.Table, shape: Tuple[int, int]):
    """A ``scipy.sparse.csr_matrix`` of ``shape`` holding the cells."""
    sparse = _scipy_sparse()
    if sparse is None:
        raise ImportError("a sparse result needs SciPy: pip install scipy")
    i, j, v = _columns(cells)
    return sparse.csr_matrix((v, (i, j)), shape=shape)
