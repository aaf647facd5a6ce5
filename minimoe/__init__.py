"""minimoe: a from-scratch NumPy/Numba Mixture-of-Experts transformer for learning and research."""
from minimoe.config import Config, ConfigError

__version__ = "0.1.0"
