"""Finding models and applying them: manifest, plans, loading, reloads and their triggers."""

from registry.repository.report import ReloadReport
from registry.repository.repository import LoadFailure, ModelRepository

__all__ = ["LoadFailure", "ModelRepository", "ReloadReport"]
