"""The bundled local GPU backend: the four operations on the operator's own GPU, with diffusers.

Importing this package imports neither torch nor diffusers: those load only inside the GPU
worker process (`backends.local.worker`) and in the pipeline modules it imports, so the core
runs without the `[local]` extra.
"""
