"""Model bundles and the code that runs them; the preprocessing shared with the trainer."""
from engines.runtime import Engine, Prediction, Window, load

__all__ = ["Engine", "Prediction", "Window", "load"]
