"""clipsearch encoder worker: consumes image jobs from Redis, encodes them with OpenCLIP, pushes vectors.

It shares the model, image loading and the queue protocol with the server through `clipsearch_core`
and never imports the server package.
"""
