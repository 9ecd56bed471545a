"""Loading of base causal LMs, including the embedded GGUF default."""

from memrag.models.loading import DEFAULT_BASE_MODEL, BaseModel, load_base_model, model_signature

__all__ = ["DEFAULT_BASE_MODEL", "BaseModel", "load_base_model", "model_signature"]
