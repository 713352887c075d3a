"""ModelsLab: the HTTP client (and, beside it, a simulator of the API for tests)."""

from backends.modelslab.client import ModelsLabClient

__all__ = ["ModelsLabClient"]
