"""baichuan: a Rust-accelerated SentencePiece tokenizer plus a PyTorch/DeepSpeed trainer for
Baichuan-7B-style models.

Only the tokenizer is imported eagerly (it needs numpy alone); torch-based modules are imported
on use (``baichuan.model``, ``baichuan.train``, ...).
"""

from baichuan.tokenizer import Tokenizer, TokenizerError

__all__ = ["Tokenizer", "TokenizerError", "__version__"]
__version__ = "0.1.0"
