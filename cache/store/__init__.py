"""The store on disk: blobs, names (index.json), the metadata index, pins and the content graph."""
