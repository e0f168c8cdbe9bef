"""The one way in: every source hands its blobs to the BlobPuller and ends in the same commit."""
