"""A small sample corpus for the demo, made at run time from text already on every machine.

No third-party text is shipped: the corpus is

* the docstrings of this Python's own standard library, read from its source files with ``ast``
  (nothing is imported or executed), one paragraph per line; and
* a few paragraphs of Chinese and English written for this project (below), so that the
  tokenizer sees both scripts the way Baichuan's corpus mixes them.

The result depends only on the Python version that runs it, and is deterministic for a given one.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Written for this project (no source text copied).
PROJECT_TEXT_ZH = """\
百川是一个面向中文和英文的开源大语言模型项目。本仓库把它的分词器、数据处理、训练和评测重新实现为可以信赖的软件。
分词器使用字节回退的 BPE 算法：常见的词语被合并成一个词元，罕见的字符则拆成字节，因此任何文本都能被编码而不会丢失信息。
批量分词命令会按顺序读取语料文件，在多个线程里并行编码，再按原来的顺序写出分片，所以输出与线程数量无关。
如果任务在中途被强行终止，只要加上续跑参数再运行一次，就能得到与一次跑完完全相同的结果。
每个分片先写到临时文件，同步到磁盘以后才改成正式的名字，因此残缺的分片永远不会被误认为完整的分片。
清单文件最后写出，里面记录了分词器的校验和、每个输入文件的大小与校验和、保留和丢弃的文档数量以及无效字节的数量。
训练脚本用内存映射读取这些分片，不需要把整个语料读进内存，也不会因为语料太大而耗尽内存。
评测部分按照原始的五样本格式在中文和英文的考试题上打分，结果以表格的形式给出。
在笔记本电脑上，可以先用很小的模型和很小的词表跑通全部流程，再把同样的命令放到多台机器的多块显卡上运行。
好的工具应当在出错时说清楚是哪个文件、哪一行出了问题，而不是默默地丢掉数据。
数字１２３和标点符号，例如逗号、句号、问号？感叹号！以及书名号《示例》都会被当作独立的符号处理。
"""

PROJECT_TEXT_EN = """\
This sample corpus exists so that the whole pipeline can be tried on any machine in a minute.
The tokenizer is trained with the same recipe as the original model, only with a much smaller vocabulary.
Each line of a plain text file is one document, as in the original training script; lines with fewer than twenty tokens are dropped.
The bulk tokenizer reads files, directories and glob patterns, and it decompresses gzip and zstd files on the fly.
Invalid UTF-8 bytes are dropped by default, as Python does with errors set to ignore, and every dropped sequence is counted.
A progress line shows how many megabytes per second are read, how many tokens per second are written, and an estimate of the time left.
"""


_DocNode = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef


def _docstring_nodes(tree: ast.Module) -> Iterator[_DocNode]:
    """The module and every class/function in it, in source order, visiting statement bodies only
    (much faster than ``ast.walk``)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        children: list[ast.AST] = []
        for attr in ("body", "orelse", "finalbody", "handlers"):
            children.extend(s for s in getattr(node, attr, ()) if isinstance(s, ast.stmt | ast.excepthandler))
        stack.extend(reversed(children))


def stdlib_docstrings() -> Iterator[str]:
    """Yields every docstring paragraph of the standard library's Python sources, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip_dirs = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo", "__pycache__"}
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(n for n in dirnames if n not in skip_dirs and not n.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    files.sort()
    for path in files:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in _docstring_nodes(tree):
            doc = ast.get_docstring(node, clean=True)
            if not doc:
                continue
            for para in doc.split("\n\n"):
                line = " ".join(para.split())
                if line:
                    yield line


@dataclass
class SampleCorpus:
    directory: Path
    files: list[Path]
    bytes: int
    lines: int


def write_sample_corpus(directory: str | Path, max_bytes: int = 1_000_000) -> SampleCorpus:
    """Writes the sample corpus into ``directory`` (created if needed) and returns what it wrote.

    Files: ``project_zh.txt`` and ``project_en.txt`` (written for the project, each paragraph
    repeated in varied combinations so that short files still carry enough tokens),
    ``stdlib_docstrings.txt`` (up to about ``max_bytes``), and the first part of the docstrings
    again as ``stdlib_docstrings.jsonl.gz`` (a ``{"text": ...}`` object per line) so that the demo
    exercises JSONL and gzip input.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    total = 0
    lines = 0

    def write_lines(name: str, items: list[str]) -> None:
        nonlocal total, lines
        p = d / name
        data = "".join(s + "\n" for s in items).encode("utf-8")
        p.write_bytes(data)
        files.append(p)
        total += len(data)
        lines += len(items)

    for name, text in (("project_zh.txt", PROJECT_TEXT_ZH), ("project_en.txt", PROJECT_TEXT_EN)):
        paras = [p for p in text.splitlines() if p.strip()]
        # pairs of paragraphs as longer documents, in a fixed order
        items = paras + [paras[i] + paras[(i * 7 + 3) % len(paras)] for i in range(len(paras))]
        write_lines(name, items)

    budget = max(max_bytes - total, 0)
    docs: list[str] = []
    used = 0
    for line in stdlib_docstrings():
        if used >= budget:
            break
        docs.append(line)
        used += len(line.encode("utf-8")) + 1
    write_lines("stdlib_docstrings.txt", docs)

    head = docs[: min(len(docs), 2000)]
    p = d / "stdlib_docstrings.jsonl.gz"
    payload = "".join(json.dumps({"text": s}, ensure_ascii=False) + "\n" for s in head).encode("utf-8")
    p.write_bytes(gzip.compress(payload, mtime=0))
    files.append(p)
    total += len(payload)
    lines += len(head)
    return SampleCorpus(d, files, total, lines)
