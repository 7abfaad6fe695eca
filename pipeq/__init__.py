"""pipeq: run long bioinformatics pipelines behind a web front end, with workers that scale by queue depth."""

__version__ = "0.1.0"
