"""Where the time goes: every benchmark of mae-ablate behind one entry point, `python -m benchmarks`
(`make bench`). See benchmarks/README.md for the parts and docs/benchmarks.md for the results."""
