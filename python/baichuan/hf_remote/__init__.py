"""Remote-code files copied into every folder written by ``baichuan export-hf``.

They are loaded by transformers (``trust_remote_code=True``), not imported from this package:
``configuration_baichuan.py`` and ``modeling_baichuan.py`` need only torch + transformers;
``tokenization_baichuan.py`` uses the ``baichuan`` Rust tokenizer when it is importable (``pip install
baichuan-stack``), else ``sentencepiece``; the ids are identical.
"""

REMOTE_FILES = ("configuration_baichuan.py", "modeling_baichuan.py", "tokenization_baichuan.py")
