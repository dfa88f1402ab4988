import importlib.util

# the `big` extra (zarr, dask, distributed, ome-zarr); `make test` installs it
collect_ignore_glob = (
    [] if all(importlib.util.find_spec(m) for m in ("zarr", "dask", "distributed", "ome_zarr")) else ["test_*.py"]
)
