"""minimoe: a from-scratch NumPy/Numba Mixture-of-Experts transformer for learning and research.

    import minimoe
    model = minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0)
    logits = model(tokens)                      # (T, V) for tokens (T,)
    model.save("ckpt"); model = minimoe.load("ckpt")
    tok = minimoe.load_tokenizer("hf_model_dir")  # a Hugging Face tokenizer.json: tok.encode(text)
"""
from minimoe.config import Config, ConfigError
from minimoe.errors import CheckpointError, DataError, MinimoeError
from minimoe.inspect.estimate import estimate
from minimoe.inspect.tracing import trace
from minimoe.io.checkpoint import load
from minimoe.kernels import backend, get_backend, matmul, set_backend, set_repack_budget
from minimoe.kernels.backend import get_activation_precision, set_activation_precision
from minimoe.model import Model
from minimoe.quant.model import quantize_model as quantize
from minimoe.tokenizer import ByteTokenizer, CharTokenizer, load_tokenizer

__version__ = "0.1.0"
