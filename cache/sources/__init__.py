"""Where images come from: registries, the Docker daemon, OCI layouts, docker-archive tarballs."""
