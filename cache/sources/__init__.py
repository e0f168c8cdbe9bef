"""Where images come from: registries, the Docker daemon, OCI layouts, docker-archive tarballs."""

DEFAULT_JOBS = 4  # blobs in flight: enough to fill a link to a registry; more adds contention on 2 cores
