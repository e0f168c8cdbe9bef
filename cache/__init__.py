"""layerhoard's library: a content-addressed cache for container image layers.

The main entry points:
    BlobStore(path)              the store on disk (an OCI image layout)
    load_image(store, ref)       a cached image: manifest, config, layers as streams
"""

from cache.errors import LayerhoardError
from cache.store.blobstore import BlobStore, default_cache_dir
from cache.store.images import CachedImage, load_image, record_image

__all__ = ["BlobStore", "CachedImage", "LayerhoardError", "default_cache_dir", "load_image", "record_image"]
