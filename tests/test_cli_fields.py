"""baichuan.cli_fields: flags derived from the config dataclasses, one home for each default."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field

import pytest

from baichuan.cli_fields import add_dataclass_arguments, dataclass_from_args, default_of, flag_of
from baichuan.units import H100_BF16_PEAK_TFLOPS, size_arg


@dataclass
class Demo:
    name: str = field(metadata={"help": "a required name"})
    count: int = field(default=3, metadata={"help": "how many"})
    rate: float | None = field(default=None, metadata={"help": "a rate", "show_default": "from elsewhere"})
    size: int = field(default=1 << 20, metadata={"type": size_arg, "show_default": "1M", "flag": "--bytes",
                                                   "aliases": ("--size",)})
    fast: bool = field(default=False, metadata={"help": "go fast"})
    strip: bool = field(default=True, metadata={"help": "keep spaces", "negate": "--no-strip"})
    mode: str = field(default="a", metadata={"choices": ["a", "b"]})
    paths: list[str] = field(default_factory=list, metadata={"nargs": "+"})


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo")
    add_dataclass_arguments(p, Demo, **kw)
    return p


def test_defaults_types_and_help_come_from_the_dataclass() -> None:
    args = _parser().parse_args(["--name", "x"])
    assert (args.count, args.rate, args.size, args.fast, args.strip, args.mode) == (3, None, 1 << 20, False, True, "a")
    got = dataclass_from_args(args, Demo)
    assert got == Demo(name="x")
    args = _parser().parse_args(["--name", "x", "--count", "7", "--rate", "0.5", "--size", "2K", "--fast",
                                 "--no-strip", "--mode", "b", "--paths", "p", "q"])
    assert dataclass_from_args(args, Demo) == Demo("x", 7, 0.5, 2048, True, False, "b", ["p", "q"])
    assert _parser().parse_args(["--name", "x", "--bytes", "1GB"]).size == 10**9
    text = " ".join(_parser().format_help().split())
    for want in ("a required name", "how many [default: 3]", "a rate [default: from elsewhere]",
                 "[default: 1M]", "--no-strip keep spaces", "go fast"):
        assert want in text, want
    assert "[default: False]" not in text and "[default: True]" not in text
    with pytest.raises(SystemExit):
        _parser().parse_args([])  # --name has no default: required
    with pytest.raises(SystemExit):
        _parser().parse_args(["--name", "x", "--count", "many"])  # typed from the annotation
    with pytest.raises(SystemExit):
        _parser().parse_args(["--name", "x", "--mode", "c"])


def test_help_override_and_a_subset_of_fields() -> None:
    p = _parser(fields=["name", "count"], help={"count": "replaced"})
    text = " ".join(p.format_help().split())
    assert "replaced [default: 3]" in text and "--rate" not in text


def test_without_defaults_a_base_config_keeps_what_no_flag_sets() -> None:
    base = Demo(name="base", count=9, strip=False)
    p = _parser(defaults=False)
    args = p.parse_args(["--name", "n"])
    assert args.count is None and args.strip is None and args.fast is None
    assert dataclass_from_args(args, Demo, base) == dataclasses.replace(base, name="n")
    assert "how many [default: 3]" in " ".join(p.format_help().split())  # the help still shows the default
    args = p.parse_args(["--name", "n", "--count", "1"])
    assert dataclass_from_args(args, Demo, base, paths=["z"]) == dataclasses.replace(base, name="n", count=1, paths=["z"])


# --- baichuan train ------------------------------------------------------------------------------

def _train_parser() -> argparse.ArgumentParser:
    from baichuan.commands.train import add_arguments

    p = argparse.ArgumentParser(prog="train")
    add_arguments(p)
    return p


def test_every_train_config_field_has_a_flag_or_is_excluded_on_purpose() -> None:
    from baichuan.commands.train import GROUPS, NO_FLAG
    from baichuan.train_config import TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    flagged = [n for group in GROUPS.values() for n in group]
    assert len(flagged) == len(set(flagged)), "a field in two groups"
    assert sorted(flagged + list(NO_FLAG)) == sorted(names)
    dests = {a.dest for a in _train_parser()._actions}
    assert set(flagged) <= dests
    assert "model_override" in dests  # model_overrides: merged into the --config's by hand


def test_train_flags_set_their_fields_and_leave_the_rest_to_the_config(tmp_path) -> None:
    from baichuan.commands.train import config_from_args
    from baichuan.train_config import TrainConfig

    p = _train_parser()
    assert config_from_args(p.parse_args([])) == TrainConfig()
    got = config_from_args(p.parse_args([
        "--data", "d", "--output-dir", "o", "--lr", "1e-4", "--zero-stage", "3", "--no-plot", "--no-tensorboard",
        "--no-progress", "--compile", "--eval-tokens", "2M", "--eval-data", "0.5:a", "0.5:b", "--peak-tflops", "500",
        "--hang-timeout", "0", "--debug-fault", "kill:0:5", "--deepspeed_config", "ds.json",
        "--model-override", "num_hidden_layers=2",
    ]))
    assert got == dataclasses.replace(
        TrainConfig(), data="d", output_dir="o", lr=1e-4, zero_stage=3, plot=False, tensorboard=False, progress=False,
        compile=True, eval_tokens=2 << 20, eval_data=["0.5:a", "0.5:b"], peak_tflops=500.0, hang_timeout=0.0,
        debug_fault="kill:0:5", deepspeed_config="ds.json", model_overrides={"num_hidden_layers": 2},
    )
    base = TrainConfig(data="x", steps=7, plot=False, seed=5, model_overrides={"a": 1})
    base.to_json_file(tmp_path / "c.json")
    got = config_from_args(p.parse_args(["--config", str(tmp_path / "c.json"), "--seed", "6",
                                         "--model-override", "b=2"]))
    assert got == dataclasses.replace(base, seed=6, model_overrides={"a": 1, "b": 2})


def test_train_help_shows_each_default() -> None:
    from baichuan.commands.train import GROUPS
    from baichuan.train_config import TrainConfig

    parser = _train_parser()
    helps = {a.dest: a.help or "" for a in parser._actions}
    by_name = {f.name: f for f in dataclasses.fields(TrainConfig)}
    no_default = {"data", "eval_data", "init_from", "tokenizer", "rope_scaling", "deepspeed_config", "debug_fault"}
    for group in GROUPS.values():
        for name in group:
            if name in no_default or isinstance(default_of(by_name[name]), bool):
                continue
            assert "[default: " in helps[name], name
    text = " ".join(parser.format_help().split())
    assert f"[default: {H100_BF16_PEAK_TFLOPS}]" in text and "[default: 0.0003 from the DeepSpeed JSON]" in text
    assert "--debug-fault" not in text


def test_one_peak_flops_figure() -> None:
    from baichuan.train_config import TrainConfig

    assert TrainConfig().peak_tflops == H100_BF16_PEAK_TFLOPS
    torch = pytest.importorskip("torch")
    del torch
    from baichuan.model import H100_BF16_PEAK_FLOPS

    assert H100_BF16_PEAK_FLOPS == H100_BF16_PEAK_TFLOPS * 1e12


# --- baichuan tokenize ---------------------------------------------------------------------------

def _tokenize_args(*extra: str) -> argparse.Namespace:
    from baichuan.commands.tokenize import add_arguments

    p = argparse.ArgumentParser(prog="tokenize")
    add_arguments(p)
    return p.parse_args(["--tokenizer", "t.model", "--input", "a", "b", "--output", "o", *extra])


def test_tokenize_defaults_are_the_dataclass_defaults() -> None:
    from baichuan.commands.tokenize import FLAGS
    from baichuan.corpus import TokenizeConfig

    args = _tokenize_args()
    by_name = {f.name: f for f in dataclasses.fields(TokenizeConfig)}
    for name in FLAGS:
        if default_of(by_name[name]) is not dataclasses.MISSING:
            assert getattr(args, name) == default_of(by_name[name]), name
    cfg = dataclass_from_args(args, TokenizeConfig)
    assert cfg == TokenizeConfig(tokenizer="t.model", inputs=["a", "b"], output="o")
    flagless = {f.name for f in dataclasses.fields(TokenizeConfig)} - set(FLAGS)
    assert flagless == {"chunk_bytes", "holdout_per_million", "extra"}
    assert [flag_of(by_name[n]) for n in ("inputs", "shard_tokens", "strip", "append_eos", "min_tokens")] == [
        "--input", "--shard-size", "--no-strip", "--no-eos", "--min-tokens"]


def test_tokenize_flags_reach_the_config() -> None:
    from baichuan.corpus import TokenizeConfig

    args = _tokenize_args("--workers", "3", "--no-eos", "--no-strip", "--shard-tokens", "64M", "--max-doc-bytes",
                          "1MB", "--format", "megatron", "--partition", "1/2", "--skip-bad-files")
    cfg = dataclass_from_args(args, TokenizeConfig)
    assert cfg == TokenizeConfig(tokenizer="t.model", inputs=["a", "b"], output="o", workers=3, append_eos=False,
                                 strip=False, shard_tokens=64 << 20, max_doc_bytes=10**6, format="megatron",
                                 partition="1/2", skip_bad_files=True)


def test_python_passes_every_corpus_option_to_rust() -> None:
    """Rust's serde defaults (rust_tokenizer/src/corpus/config.rs) never apply to a job from Python:
    every field goes into the JSON, so the dataclass is the one source of the defaults."""
    from baichuan.corpus import TokenizeConfig

    cfg = TokenizeConfig(tokenizer="t", inputs=["a"], output="o")
    sent = json.loads(cfg.to_json())
    assert set(sent) == {f.name for f in dataclasses.fields(TokenizeConfig)} - {"extra"}
    assert sent["shard_tokens"] == 1 << 28 and sent["workers"] == 0 and sent["append_eos"] is True


def test_export_hf_uses_the_shared_size_rules() -> None:
    import baichuan.hf as hf

    assert not hasattr(hf, "parse_size") or hf.parse_size is __import__("baichuan.units").units.parse_size
    assert hf._shard_size("2GB") == 2 * 10**9 and hf._shard_size("500MiB") == 500 << 20 and hf._shard_size("10B") == 10
    with pytest.raises(ValueError, match=r"cannot parse size '2 parsecs' \(e.g. 2GB, 500MB\)"):
        hf._shard_size("2 parsecs")
    with pytest.raises(ValueError, match="must be more than 0 bytes, got '0MB'"):
        hf._shard_size("0MB")


# --- baichuan train-tokenizer --------------------------------------------------------------------

def test_train_tokenizer_defaults_are_the_dataclass_defaults() -> None:
    from baichuan.commands.train_tokenizer import FLAGS, MORE_FLAGS, add_arguments
    from baichuan.tokenizer_training import BAICHUAN_SYMBOLS, TrainTokenizerConfig, reserved_symbols

    p = argparse.ArgumentParser(prog="train-tokenizer")
    add_arguments(p)
    args = p.parse_args(["--input", "a", "--output", "m"])
    by_name = {f.name: f for f in dataclasses.fields(TrainTokenizerConfig)}
    for name in FLAGS + MORE_FLAGS:
        if default_of(by_name[name]) is not dataclasses.MISSING:
            assert getattr(args, name) == default_of(by_name[name]), name
    symbols = list(BAICHUAN_SYMBOLS) + reserved_symbols(args.reserved)
    cfg = dataclass_from_args(args, TrainTokenizerConfig, fields=FLAGS + MORE_FLAGS, user_defined_symbols=symbols)
    assert cfg == TrainTokenizerConfig(inputs=["a"], model_prefix="m")
    args = p.parse_args(["--input", "a", "--model-prefix", "m", "--vocab-size", "1000", "--no-byte-fallback",
                         "--control-symbols", "<a>,<b>", "--input-sentence-size", "500K", "--user-defined-symbols", "x"])
    cfg = dataclass_from_args(args, TrainTokenizerConfig, fields=FLAGS + MORE_FLAGS, user_defined_symbols=[])
    assert (cfg.vocab_size, cfg.byte_fallback, cfg.control_symbols, cfg.input_sentence_size, cfg.user_defined_symbols) == (
        1000, False, ["<a>", "<b>"], 500 << 10, [])
