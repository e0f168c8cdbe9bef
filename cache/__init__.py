"""layerhoard's library: a content-addressed cache for container image layers.

The main entry points:
    BlobStore(path)              the store on disk (an OCI image layout)
    load_image(store, ref)       a cached image: manifest, config, layers as streams
"""

from cache.errors import LayerhoardError
from cache.images import CachedImage, load_image, record_image
from cache.store import BlobStore, default_cache_dir

__all__ = ["BlobStore", "CachedImage", "LayerhoardError", "default_cache_dir", "load_image", "record_image"]
