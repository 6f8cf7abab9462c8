"""clipsearch encoder worker: consumes image jobs from Redis, encodes them with OpenCLIP, pushes vectors.

Also home of the pieces the server shares with it: the model (`encoder`), image loading (`images`)
and the queue layout (`queue`). Import those modules directly; this package imports nothing heavy.
"""
