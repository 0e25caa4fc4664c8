"""Curating a pretraining set from an uncurated image pool (DINOv2's LVD-142M recipe).

Three resumable stages write into one output folder (``store.py`` owns its layout):

1. ``embed.py``: L2-normalised teacher CLS features of the pool, query and evaluation images,
   in shards; unreadable files are skipped and counted.
2. ``dedup.py``: near-duplicates inside the pool (cosine >= threshold, connected components, one
   kept per component) and pool images that duplicate a query or evaluation image are removed.
3. ``retrieve.py``: sample-based (k nearest pool images of each query image) and cluster-based
   (k-means over the pool, up to N images of each cluster a query image falls into) retrieval.

``index.py`` holds the nearest-neighbour search (Faiss flat / IVF-PQ, or an exact PyTorch
fallback when Faiss is not installed), ``kmeans.py`` the clustering, and ``run.py`` the one
function a notebook calls: ``curate(...) -> CurationResult``.
"""
