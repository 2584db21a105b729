//! File ingest and export, checked against NumPy and SciPy.
