"""Remote-code files copied into every folder written by ``baichuan export-hf``.

They are loaded by transformers (``trust_remote_code=True``), not imported from this package:
``configuration_baichuan.py`` and ``modeling_baichuan.py`` need only torch + transformers;
``tokenization_baichuan.py`` wraps the ``baichuan`` Rust tokenizer (``pip install baichuan``).
"""

REMOTE_FILES = ("configuration_baichuan.py", "modeling_baichuan.py", "tokenization_baichuan.py")
