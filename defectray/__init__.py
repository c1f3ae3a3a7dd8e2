"""defectray: defect detection trained on defect-free images, with realistic synthetic anomalies, on Ray."""

__version__ = "0.1.0"


def load_model(uri: str):
    """Load a trained defectray model from a local path or fsspec URI; see defectray.models.modelfile."""
    from defectray.models.modelfile import load_model as _load

    return _load(uri)


__all__ = ["load_model", "__version__"]
