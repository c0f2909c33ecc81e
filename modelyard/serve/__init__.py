"""The model server: Open Inference Protocol v2 over HTTP, with batching, caching and metrics."""
