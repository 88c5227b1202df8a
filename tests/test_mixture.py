"""baichuan.mixture (weighted mixtures, held-out sequences) without DeepSpeed, and `baichuan train`'s
one-line errors for bad mixture / validation input (checked before anything is written)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from baichuan.cli import main as cli_main
from baichuan.data import DataError, file_sha256
from baichuan.mixture import (
    EvalSet,
    MixtureSchedule,
    MixtureSource,
    apportion,
    eval_overlap_warnings,
    integer_weights,
    load_sources,
    parse_sources,
)
from test_data import SPM, write_shards

F = Fraction


def make_source(root: Path, name: str, n_docs: int, band: int, tok: Path | None = None, seed: int = 0) -> Path:
    """Shards whose tokens all lie in [band*100, band*100+99] (so a row tells its source)."""
    rng = np.random.default_rng(seed + band)
    docs = [list(rng.integers(band * 100, band * 100 + 99, rng.integers(10, 40))) for _ in range(n_docs)]
    if tok is None:
        tok = root / "tok.model"
        if not tok.exists():
            tok.write_bytes(b"the tokenizer, hashed only")
    return write_shards(root / name, docs, tok, 32000, eos_id=band * 100 + 99)


@pytest.fixture()
def three(tmp_path: Path) -> list[Path]:
    return [make_source(tmp_path, "zh", 60, 1), make_source(tmp_path, "en", 40, 2), make_source(tmp_path, "code", 12, 3)]


def mixture(paths: list[Path], weights: list[str], seq_len: int = 17, micro_batch: int = 2, rank: int = 0,
            world_size: int = 1, seed: int = 5, state: dict | None = None) -> MixtureSource:
    specs = parse_sources([f"{w}:{p}" for w, p in zip(weights, paths)])
    readers = load_sources(specs, seq_len, "--data", vocab_size=32000, expected_sha256=None, expected_from="")
    return MixtureSource(specs, readers, seq_len, micro_batch, rank, world_size, seed, state)


# ------------------------------------------------------------------------------------- specs
def test_parse_sources() -> None:
    (one,) = parse_sources("shards/")
    assert one.path == "shards/" and one.weight is None  # a bare path keeps today's meaning
    specs = parse_sources(["0.7:zh/", "0.2:en/", "1e-1:code/"])
    assert [(s.path, s.weight) for s in specs] == [("zh/", F(7, 10)), ("en/", F(1, 5)), ("code/", F(1, 10))]
    assert [s.weight for s in parse_sources(["3:a", "1:b"])] == [3, 1]  # need not sum to 1
    assert parse_sources("./a:b/")[0].path == "./a:b/"  # a colon in a path: write ./
    assert parse_sources(["0.5:/abs/a", "0.5:rel/b"])[0].path == "/abs/a"


@pytest.mark.parametrize(
    "value, message",
    [
        (["0:a", "1:b"], "--data 0:a: the weight must be > 0, got 0"),
        (["-1:a", "1:b"], "--data -1:a: the weight must be > 0, got -1"),
        (["x:a", "1:b"], "--data x:a: weight 'x' is not a number"),
        (["nan:a", "1:b"], "--data nan:a: weight 'nan' is not a number"),
        (["inf:a", "1:b"], "--data inf:a: weight 'inf' is not a number"),
        (["0.5:", "1:b"], "--data 0.5:: no path after the weight"),
        (["0.5:a", "b"], "--data b: a mixture needs a weight for every source (WEIGHT:PATH, e.g. 0.5:b)"),
        (["0.5:a/", "0.5:./a"], "--data: source ./a is given twice (0.5:a/ and 0.5:./a)"),
        ([], "--data: no data given"),
    ],
)
def test_parse_sources_refuses(value: list[str], message: str) -> None:
    with pytest.raises(DataError) as e:
        parse_sources(value)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------- schedule
WEIGHTS = [
    [F("0.7"), F("0.2"), F("0.1")],
    [F(3), F(1)],
    [F(1), F(1), F(1)],
    [F("0.333"), F("0.667")],
    [F(5), F("0.001"), F(3)],
    [F("0.123456789"), F("0.5"), F("2.71828"), F(1)],  # period capped: rounded to 65536 parts
]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_shares_track_weights_within_one_percent_over_1000_sequences(weights: list[Fraction]) -> None:
    p = np.array([float(w) for w in weights])
    p /= p.sum()
    for seed in (0, 1, 1234):
        sched = MixtureSchedule(weights, seed)
        src = sched.source_at(np.arange(30_000))
        for start in range(0, 29_000, 97):  # every window of 1000 consecutive sequences, sampled
            share = np.bincount(src[start : start + 1000], minlength=len(weights)) / 1000
            assert np.abs(share - p).max() <= 0.01, (seed, start, share, p)
    assert MixtureSchedule(weights, 0).period <= 1 << 16


def test_schedule_counts_and_positions_match_a_replay() -> None:
    for weights in WEIGHTS[:5]:
        sched = MixtureSchedule(weights, 9)
        g = np.arange(5000)
        src = sched.source_at(g)
        s, k = sched.locate(g)
        np.testing.assert_array_equal(s, src)
        for j in range(len(weights)):
            idx = np.flatnonzero(src == j)
            np.testing.assert_array_equal(k[idx], np.arange(len(idx)))  # the k-th sequence of its source
            for n in (0, 1, 777, 4999):
                assert sched.counts(n)[j] == np.count_nonzero(src[:n] == j)
        # far positions in closed form: the schedule is periodic
        far = 10**12 + 12345
        assert sched.counts(far).sum() == far
        assert sched.source_at(np.array([far]))[0] == sched.source_at(np.array([far % sched.period]))[0]


def test_schedule_is_deterministic_and_seeded() -> None:
    a = MixtureSchedule(WEIGHTS[0], 1).source_at(np.arange(100))
    np.testing.assert_array_equal(a, MixtureSchedule(WEIGHTS[0], 1).source_at(np.arange(100)))
    assert not np.array_equal(a, MixtureSchedule(WEIGHTS[0], 2).source_at(np.arange(100)))
    assert integer_weights([F("0.7"), F("0.2"), F("0.1")]) == [7, 2, 1]
    assert integer_weights([F(6), F(2)]) == [3, 1]


# ---------------------------------------------------------------------------------- source
def _band(row: np.ndarray) -> int:
    bands = set((row // 100).tolist())
    assert len(bands) == 1, "a sequence mixes sources"
    return bands.pop()


def test_realised_token_share_and_tokens_by_source(three: list[Path]) -> None:
    src = mixture(three, ["0.7", "0.2", "0.1"], micro_batch=4)
    batches, named = [], []
    for _ in range(250):  # 1000 sequences
        batches.append(src.next_batch())
        named += [s + 1 for s in src.last_sources]  # the rows' sources (named in a bad-token error)
    rows = np.concatenate(batches)
    bands = np.array([_band(r) for r in rows])
    assert bands.tolist() == named
    share = np.bincount(bands, minlength=4)[1:] / len(bands)
    assert np.abs(share - [0.7, 0.2, 0.1]).max() <= 0.01, share
    tokens = src.tokens_by_source()
    assert list(tokens) == [str(p) for p in three]
    assert sum(tokens.values()) == 1000 * 16
    assert [tokens[str(p)] // 16 for p in three] == np.bincount(bands, minlength=4)[1:].tolist()


def test_no_window_twice_before_a_source_is_exhausted_then_next_epoch_counted(three: list[Path]) -> None:
    src = mixture(three, ["2", "1", "1"], micro_batch=3)
    n = src.n_windows.tolist()
    seen: list[list[tuple[int, int]]] = [[], [], []]
    for _ in range(300):
        g = src.global_indices(src.micro_batches)
        for s, epoch, w in src.locate(g):
            seen[s].append((epoch, w))
        batch = src.next_batch()
        for row, (s, _, w) in zip(batch, src.locate(g)):
            np.testing.assert_array_equal(row, src.readers[s].window(w))
    for s in range(3):
        assert len(seen[s]) > 2 * n[s], "each source must wrap at least twice in this test"
        for e in range(len(seen[s]) // n[s]):
            block = seen[s][e * n[s] : (e + 1) * n[s]]
            assert {ep for ep, _ in block} == {e}
            assert sorted(w for _, w in block) == list(range(n[s]))  # every window once per epoch
        assert [w for _, w in seen[s][: n[s]]] != [w for _, w in seen[s][n[s] : 2 * n[s]]]  # a new order
    counts = src.sequences_by_source()
    assert src.epochs_by_source() == {name: counts[name] // k for name, k in zip(src.names, n)}
    assert min(src.epochs_by_source().values()) >= 2


def _global_stream(paths: list[Path], world: int, batches: int, state: dict | None = None, mb: int = 2) -> list[np.ndarray]:
    """The sequences of all ranks in global order (rank r's micro-batch m holds (m*W + r)*mb + j)."""
    ranks = [mixture(paths, ["0.6", "0.3", "0.1"], micro_batch=mb, rank=r, world_size=world, state=state)
             for r in range(world)]
    out = []
    for _ in range(batches):
        for r in range(world):
            out.extend(ranks[r].next_batch())
    return out


def test_global_stream_does_not_depend_on_the_number_of_ranks(three: list[Path]) -> None:
    one = _global_stream(three, 1, 60)
    for world in (2, 3):
        other = _global_stream(three, world, 60 // world)
        for a, b in zip(one, other):
            np.testing.assert_array_equal(a, b)


def test_resume_is_exact_also_with_another_number_of_ranks(three: list[Path]) -> None:
    ref = _global_stream(three, 1, 90)
    ranks = [mixture(three, ["0.6", "0.3", "0.1"], rank=r, world_size=2) for r in range(2)]
    for _ in range(7):
        for r in ranks:
            r.next_batch()
    states = [json.loads(json.dumps(r.state_dict())) for r in ranks]
    assert states[0]["consumed"] == states[1]["consumed"] == 28 and states[0]["kind"] == "mixture"
    for world in (1, 2, 3):
        resumed = _global_stream(three, world, 12 // world * 2, state=states[0])
        for j, row in enumerate(resumed):
            np.testing.assert_array_equal(row, ref[28 + j], err_msg=f"world {world}, sequence {28 + j}")
        assert mixture(three, ["0.6", "0.3", "0.1"], world_size=world, state=states[0]).sequences_by_source() == \
            ranks[0].sequences_by_source()


def test_resume_refuses_another_mixture(three: list[Path]) -> None:
    state = mixture(three, ["0.6", "0.3", "0.1"]).state_dict()
    with pytest.raises(DataError, match=r"checkpoint's mixture is 0.6:.*zh .*this run's is 0.5:.*same sources and weights"):
        mixture(three, ["0.5", "0.4", "0.1"], state=state)
    with pytest.raises(DataError, match="seed=5, this run has 6"):
        mixture(three, ["0.6", "0.3", "0.1"], seed=6, state=state)
    with pytest.raises(DataError, match="checkpoint read a single data source"):
        mixture(three, ["0.6", "0.3", "0.1"], state={"kind": "shards", "epoch": 0, "index": 0})
    state["sources"][0]["n_windows"] = 1  # the shards of zh changed since the checkpoint
    with pytest.raises(DataError, match=r"source .*zh now makes \d+ sequences of 17 tokens, the checkpoint's had 1"):
        mixture(three, ["0.6", "0.3", "0.1"], state=state)


# ------------------------------------------------------------------------------ validation
def test_eval_set_is_fixed_split_by_weight_and_covered_once_by_any_ranks(three: list[Path]) -> None:
    specs = parse_sources([f"0.75:{three[0]}", f"0.25:{three[2]}"], "--eval-data")
    readers = load_sources(specs, 17, "--eval-data", vocab_size=32000, expected_sha256=None, expected_from="")
    ev = EvalSet(specs, readers, 17, eval_tokens=16 * 10)  # 10 sequences: 7.5 / 2.5 -> 8 / 2
    assert [len(w) for w in ev.windows] == [8, 2] and ev.tokens == 160
    np.testing.assert_array_equal(ev.windows[0], np.arange(8))  # the first windows, in stream order
    for world in (1, 2, 3):
        for s in range(2):
            got: list[int] = []
            n_batches = set()
            for r in range(world):
                batches = list(ev.batches(s, r, world, micro_batch=3))
                n_batches.add(len(batches))
                for rows, valid in batches:
                    for row in rows[:valid]:
                        got.append(next(w for w in ev.windows[s] if np.array_equal(readers[s].window(int(w)), row)))
            assert sorted(got) == ev.windows[s].tolist()  # every held-out sequence exactly once
            assert len(n_batches) == 1  # the same number of forwards on every rank (ZeRO-3)
    single = EvalSet(parse_sources(str(three[2])), [readers[1]], 17, eval_tokens=10**6)
    assert single.short and len(single.windows[0]) == readers[1].n_windows and not single.is_mixture
    assert apportion(10, [F(1), F(1), F(1)]) == [4, 3, 3] and apportion(2, [F(100), F(1), F(1)]) == [1, 1, 1]


def test_eval_overlap_warns() -> None:
    assert eval_overlap_warnings(["0.5:a/", "0.5:b"], ["0.5:held", "0.5:./a"]) == [
        "baichuan train: warning: --eval-data ./a is also a training source (0.5:a/); its validation loss is not held out"
    ]
    assert eval_overlap_warnings("a", None) == [] and eval_overlap_warnings("a", "held") == []


# ------------------------------------------------------------------------- bad input (CLI)
def _refused(capsys: pytest.CaptureFixture[str], out: Path, argv: list[str]) -> str:
    rc = cli_main(["train", *argv, "--output-dir", str(out), "--model", "tiny", "--max-length", "16",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("baichuan train: error: "), err
    assert not out.exists(), "nothing may be written for refused input"
    return lines[0].removeprefix("baichuan train: error: ")


def test_bad_mixture_input_is_one_line_naming_it(three: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zh, en, code = (str(p) for p in three)
    out = tmp_path / "run"
    missing = str(tmp_path / "nope")
    assert _refused(capsys, out, ["--data", f"0.5:{zh}", f"0.5:{missing}"]) == \
        f"training data not found: {missing} (--data 0.5:{missing})"
    assert _refused(capsys, out, ["--data", f"0:{zh}", f"1:{en}"]) == f"--data 0:{zh}: the weight must be > 0, got 0"
    assert _refused(capsys, out, ["--data", f"-0.5:{zh}", f"1:{en}"]) == f"--data -0.5:{zh}: the weight must be > 0, got -0.5"
    assert _refused(capsys, out, ["--data", f"heavy:{zh}", f"1:{en}"]).startswith(
        f"--data heavy:{zh}: weight 'heavy' is not a number")
    assert _refused(capsys, out, ["--data", f"0.5:{zh}", f"0.5:{zh}/"]) == \
        f"--data: source {zh}/ is given twice (0.5:{zh} and 0.5:{zh}/)"
    link = tmp_path / "zh-link"
    link.symlink_to(zh)
    assert _refused(capsys, out, ["--data", f"0.5:{zh}", f"0.5:{link}"]) == \
        f"--data: {zh} and {link} are the same directory (a source given twice)"
    empty = write_shards(tmp_path / "empty", [], three[0].parent / "tok.model", 32000, n_shards=1)
    assert _refused(capsys, out, ["--data", f"0.5:{zh}", f"0.5:{empty}"]) == \
        f"--data 0.5:{empty}: the shards in {empty} hold no tokens (empty source)"
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("hello\n")
    assert f"{text} is a directory of text files; a mixture or validation source must be a `baichuan tokenize` " \
        "output directory" in _refused(capsys, out, ["--data", f"0.5:{zh}", f"0.5:{text}"])
    assert _refused(capsys, out, ["--data", f"0.5:{zh}", en]) == \
        f"--data {en}: a mixture needs a weight for every source (WEIGHT:PATH, e.g. 0.5:{en})"
    # validation data
    assert _refused(capsys, out, ["--data", zh, "--eval-data", f"0.5:{en}", f"0.5:{missing}"]) == \
        f"--eval-data 0.5:{missing}: {missing} not found"
    assert _refused(capsys, out, ["--data", zh, "--eval-data", f"none:{en}", f"1:{code}"]).startswith(
        f"--eval-data none:{en}: weight 'none' is not a number")
    assert _refused(capsys, out, ["--data", zh, "--eval-data", en, "--eval-every", "0"]) == \
        "--eval-every must be positive, got 0"
    assert _refused(capsys, out, ["--data", zh, "--eval-data", str(empty)]) == \
        f"--eval-data {empty}: the shards in {empty} hold no tokens (empty source)"


def test_a_source_with_another_tokenizer_is_named(three: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other_tok = tmp_path / "other.model"
    other_tok.write_bytes(b"another tokenizer")
    odd = make_source(tmp_path, "odd", 20, 4, tok=other_tok)
    zh = str(three[0])
    out = tmp_path / "run"
    err = _refused(capsys, out, ["--data", f"0.5:{zh}", f"0.5:{odd}"])
    assert err.startswith(f"--data source {odd}: tokenized with a different tokenizer (sha256 {file_sha256(other_tok)[:16]}")
    assert f"than {zh} (sha256 " in err
    err = _refused(capsys, out, ["--data", zh, "--eval-data", str(odd)])
    assert err.startswith(f"--eval-data source {odd}: {odd}: these shards were tokenized with a different tokenizer")
    if SPM.is_file():  # against the model's tokenizer (--tokenizer): the source is named too
        llama = make_source(tmp_path, "llama", 20, 5, tok=SPM)
        err = _refused(capsys, out, ["--data", f"0.5:{llama}", f"0.5:{odd}", "--tokenizer", str(SPM)])
        assert err.startswith(f"--data source {odd}: {odd}: these shards were tokenized with a different tokenizer")


def test_config_json_takes_a_mixture(three: list[Path], tmp_path: Path) -> None:
    from baichuan.train import preflight
    from baichuan.train_config import TrainConfig

    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps({"data": [f"0.7:{three[0]}", f"0.3:{three[1]}"], "eval_data": str(three[2]),
                                    "output_dir": str(tmp_path / "run"), "model": "tiny", "max_length": 16,
                                    "eval_every": 5, "eval_tokens": 64}))
    cfg = TrainConfig.from_json_file(cfg_path)
    preflight(cfg)  # every check passes, nothing is written
    assert not (tmp_path / "run").exists()
    assert set(cfg.inputs()) >= {str(p) for p in three}
