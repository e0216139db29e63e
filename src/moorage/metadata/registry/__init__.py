"""SQL for repositories, blobs, manifests, tags and referrers."""
