"""What an image is: digests, references, and manifests, indexes and configs parsed strictly from their bytes."""
