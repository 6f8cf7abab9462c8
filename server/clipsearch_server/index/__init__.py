"""The vector-index seam (`vector_index.VectorIndex`) and its kinds (HNSW-Flat, HNSW-SQ8, IVF-PQ),
segments, vector files, snapshots and their sharing. The only package that imports faiss.
"""
