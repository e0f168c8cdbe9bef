"""One module per wire format: gzip/zstd, tar streams, docker save streams, and index.json."""
