"""A client for the OCI Distribution API: auth, retries, manifests and blobs."""
