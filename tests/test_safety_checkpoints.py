"""Issue 10 §1/§3/§5: reading a folder a user hands us never unpickles it.

A poisoned file is a real pickle whose ``__reduce__`` creates a marker folder when unpickled
(``test_the_poison_is_live`` proves it), written as a raw pickle (protocol 2, so the unpickler reaches
the GLOBAL) and through ``torch.save`` (zip). It is put in every position a loader could read:
DeepSpeed model states, DeepSpeed optimizer states, ``pytorch_model.bin``, a shard named by a
``pytorch_model.bin.index.json``, the index itself. Every command that takes a checkpoint folder
(export-hf, generate, eval with both backends, train --init-from, train --resume) either succeeds
from the safetensors ``model/`` folder (the documented preference) or exits non-zero with one line
``baichuan <command>: error: ...``; the marker never appears.

The checkpoint is a real ``baichuan train`` run (DeepSpeed ZeRO-2 on one CPU rank, tiny model,
vocabulary 32000 with Llama 2's SentencePiece model from ../shared).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from baichuan.checkpoint import save_model
from baichuan.cli import main
from baichuan.config import ModelConfig
from baichuan.model import BaichuanForCausalLM

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPM = SHARED / "spm-models" / "llama2.model"  # vocabulary 32000
EVAL = SHARED / "eval-data"
MMLU = EVAL / "mmlu" / "test"

pytestmark = [
    pytest.mark.skipif(not (SPM.is_file() and MMLU.is_dir()), reason="../shared is absent"),
    pytest.mark.usefixtures("one_torch_thread"),
]

STEP = "step-1"
FORMATS = ("raw", "zip")
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
MODEL_STATES = "mp_rank_00_model_states.pt"


# ------------------------------------------------------------------------------------ poison
class Poison:
    """Unpickling this creates ``marker`` (a folder): proof that the file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (self.marker,))


def write_poison(path: Path, marker: Path, fmt: str, payload: dict | None = None) -> None:
    """``payload`` (the file's real content) goes into the torch.save form only: an unsafe
    torch.load of a raw pickle runs the payload and then stops at torch's magic number anyway
    (and pickling tensors the raw way takes seconds)."""
    path.unlink(missing_ok=True)
    if fmt == "raw":
        path.write_bytes(pickle.dumps({"x": Poison(marker), "ds_version": "0.19.8"}, protocol=2))
    else:
        torch.save({"x": Poison(marker), **(payload or {})}, path)


def model_states_payload(ckpt_step: Path) -> dict:
    """What a DeepSpeed model-states file holds (plain weights, plain metadata), read safely."""
    return torch.load(ckpt_step / "mp_rank_00_model_states.pt", weights_only=True)


def optim_states_payload(ckpt_step: Path) -> dict:
    """The real content of this test's own ZeRO-2 optimizer states (weights_only with the three
    DeepSpeed classes they hold allowed), so a poisoned copy still works for DeepSpeed."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(ckpt_step / OPTIM, weights_only=True)


def poison_position(step: Path, position: str, marker: Path, fmt: str) -> str:
    """Replace a DeepSpeed file of ``step`` by a poisoned copy that keeps its real content."""
    if position == "optim_states":
        write_poison(step / OPTIM, marker, fmt, optim_states_payload(step))
        return OPTIM
    write_poison(step / MODEL_STATES, marker, fmt, model_states_payload(step))
    return MODEL_STATES


def test_the_poison_is_live(tmp_path: Path) -> None:
    """Control: the payload really runs when something unpickles it (so its absence means safety)."""
    for fmt in FORMATS:
        write_poison(tmp_path / f"p-{fmt}.pt", tmp_path / f"marker-{fmt}", fmt)
    code = "import sys, torch\nfor f in sys.argv[1:]:\n    try: torch.load(f, weights_only=False)\n    except Exception: pass"
    files = [str(tmp_path / f"p-{fmt}.pt") for fmt in FORMATS]
    subprocess.run([sys.executable, "-c", code, *files], check=False, capture_output=True, timeout=120)
    for fmt in FORMATS:
        assert (tmp_path / f"marker-{fmt}").is_dir(), fmt


# ------------------------------------------------------------------------------- fixtures
def train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "baichuan", "train", "--data", str(data), "--tokenizer", str(SPM),
        "--output-dir", str(out), "--model", "tiny", "--max-length", "16", "--micro-batch-size", "1",
        "--steps", "1", "--save-every", "1", "--precision", "fp32", "--seed", "3",
        "--no-progress", "--no-tensorboard", "--no-plot", *extra,
    ]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text")
    for src in sorted(MMLU.glob("*.csv"))[:2]:
        lines = src.read_text(encoding="utf-8").splitlines()[:40]
        (out / src.name.replace(".csv", ".txt")).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, text_dir: Path) -> Path:
    """A real `baichuan train` run directory with one checkpoint (checkpoints/step-1)."""
    out = tmp_path_factory.mktemp("run") / "run"
    r = subprocess.run(train_cmd(text_dir, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert (out / "checkpoints" / "latest").read_text().strip() == STEP
    return out


@pytest.fixture
def ckpts(trained: Path, tmp_path: Path) -> Path:
    """A fresh copy of the run's checkpoints folder (latest, step-1/...)."""
    dst = tmp_path / "ckpts"
    shutil.copytree(trained / "checkpoints", dst)
    return dst


@pytest.fixture(scope="module")
def tiny_native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = BaichuanForCausalLM(ModelConfig.preset("tiny", vocab_size=32000))
    folder = tmp_path_factory.mktemp("native") / "model"
    save_model(model, folder)
    shutil.copyfile(SPM, folder / "tokenizer.model")
    return folder


def hf_bin_folder(native: Path, dst: Path, sharded: bool) -> Path:
    """An official-style transformers folder of ``native`` with ``pytorch_model*.bin`` weights."""
    from baichuan.hf import export_hf

    export_hf(native, dst)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(dst.glob("model-*.safetensors")):
        from safetensors.torch import load_file

        state.update(load_file(str(f)))
        f.unlink()
    (dst / "model.safetensors.index.json").unlink()
    if not sharded:
        torch.save(state, dst / "pytorch_model.bin")
        return dst
    keys = sorted(state)
    parts = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
             "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, part in parts.items():
        torch.save({k: state[k] for k in part}, dst / name)
    weight_map = {k: name for name, part in parts.items() for k in part}
    (dst / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def llama_bin_folder(dst: Path) -> Path:
    """A plain transformers Llama folder (the `eval --backend transformers` path) with a .bin file."""
    import transformers
    from safetensors.torch import load_file

    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(dst)
    state = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    torch.save(state, dst / "pytorch_model.bin")
    return dst


# ------------------------------------------------------------------------------- commands
def eval_args(model: Path, *extra: str) -> list[str]:
    return ["eval", "--task", "mmlu", "--data-dir", str(EVAL), "--model", str(model), "--subjects", "anatomy",
            "--limit", "2", "--shot", "1", "--no-progress", *extra]


Command = Callable[[Path], list[str]]
COMMANDS: dict[str, Command] = {
    "export-hf": lambda m: ["export-hf", "--checkpoint", str(m), "--output", str(m.parent / "exported"),
                            "--tokenizer", str(SPM)],
    "generate": lambda m: ["generate", "--model", str(m), "--tokenizer", str(SPM), "--max-new-tokens", "2",
                           "--device", "cpu", "hello"],
    "eval": lambda m: eval_args(m, "--tokenizer", str(SPM)),
}


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, command: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1, (rc, err)
    assert lines[0].startswith(f"baichuan {command}: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err
    return lines[0]


def train_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`baichuan train` on one rank in this process: every refusal here happens before DeepSpeed starts."""
    rc, _, err = cli(args[3:], capsys)  # drop "python -m baichuan"
    return rc, err


# ------------------------------------------- DeepSpeed folders: the safetensors model/ folder wins
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("position", ["optim_states", "model_states"])
def test_deepspeed_folder_reads_model_folder_not_pickles(
    ckpts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], position: str, fmt: str
) -> None:
    """export-hf (checkpoints dir and step dir), generate and eval succeed from step-1/model/ while a
    poisoned DeepSpeed file sits beside it; eval --backend transformers refuses the folder."""
    marker = tmp_path / "PWNED"
    step = ckpts / STEP
    poison_position(step, position, marker, fmt)
    for target in (ckpts, step):
        out = tmp_path / f"hf-{target.name}"
        rc, _, err = cli(["export-hf", "--checkpoint", str(target), "--output", str(out)], capsys)
        assert not marker.exists()
        assert rc == 0, err
        assert (out / "model.safetensors.index.json").is_file()
    rc, out, err = cli(["generate", "--model", str(ckpts), "--max-new-tokens", "3", "--device", "cpu", "The"], capsys)
    assert rc == 0 and out.strip(), err
    rc, out, err = cli(eval_args(ckpts), capsys)  # tokenizer found in step-1/model/, as generate does
    assert rc == 0 and "mmlu test 1-shot, 2 questions" in out, err
    rc, _, err = cli(eval_args(ckpts, "--backend", "transformers"), capsys)
    assert_one_line_error(rc, err, "eval", "DeepSpeed checkpoint", "--backend baichuan")
    assert not marker.exists()


# ------------------------------ DeepSpeed folders without model/: weights_only module states only
def drop_model_folder(ckpts: Path) -> Path:
    step = ckpts / STEP
    (step / "model" / "model.safetensors").unlink()
    return step


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_deepspeed_poisoned_model_states_refused(
    ckpts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, fmt: str
) -> None:
    marker = tmp_path / "PWNED"
    step = drop_model_folder(ckpts)
    poison_position(step, "model_states", marker, fmt)
    rc, _, err = cli(COMMANDS[command](ckpts), capsys)
    assert not marker.exists()
    assert_one_line_error(rc, err, command, "mp_rank_00_model_states.pt", "refused", "not unpickled")
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_deepspeed_optimizer_states_never_opened(
    ckpts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """Without model/, ZeRO-1/2 weights come from the model states (weights_only); the poisoned
    optimizer states beside them are not opened, so the export succeeds and equals the model/ weights."""
    from baichuan.hf import load_checkpoint

    marker = tmp_path / "PWNED"
    _, reference = load_checkpoint(ckpts / STEP / "model")
    step = drop_model_folder(ckpts)
    poison_position(step, "optim_states", marker, fmt)
    rc, _, err = cli(COMMANDS["export-hf"](ckpts), capsys)
    assert not marker.exists()
    assert rc == 0, err
    _, exported = load_checkpoint(ckpts.parent / "exported")
    assert all(torch.equal(exported[k], reference[k]) for k in reference)
    rc, _, err = cli(COMMANDS["generate"](step), capsys)
    assert rc == 0, err
    assert not marker.exists()


def test_zero3_without_model_folder_refused(ckpts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ZeRO-3 model states hold no weights (they are in the pickled optimizer shards): refused,
    pointing to the model/ folder, without opening anything."""
    marker = tmp_path / "PWNED"
    step = drop_model_folder(ckpts)
    (step / "mp_rank_00_model_states.pt").rename(step / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    write_poison(step / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker, "zip")
    rc, _, err = cli(COMMANDS["export-hf"](ckpts), capsys)
    assert_one_line_error(rc, err, "export-hf", "ZeRO-3", "not opened", str(step / "model"))
    assert not marker.exists()


# ------------------------------------------------------------------ transformers .bin folders
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", ["single", "sharded", "index"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_poisoned_bin_folder_refused(
    tiny_native: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, layout: str, fmt: str
) -> None:
    """pytorch_model.bin, the second shard of an index, or the index itself is a pickle: one line."""
    marker = tmp_path / "PWNED"
    folder = hf_bin_folder(tiny_native, tmp_path / "hf", sharded=layout != "single")
    victim = {"single": "pytorch_model.bin", "sharded": "pytorch_model-00002-of-00002.bin",
              "index": "pytorch_model.bin.index.json"}[layout]
    write_poison(folder / victim, marker, fmt)
    rc, _, err = cli(COMMANDS[command](folder), capsys)
    assert_one_line_error(rc, err, command, victim)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_transformers_backend_poisoned_bin_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """eval's transformers backend (AutoModelForCausalLM) on a poisoned pytorch_model.bin: one line."""
    marker = tmp_path / "PWNED"
    folder = llama_bin_folder(tmp_path / "llama")
    rc, out, err = cli(eval_args(folder, "--tokenizer", str(SPM)), capsys)  # the clean folder evaluates
    assert rc == 0, err
    write_poison(folder / "pytorch_model.bin", marker, fmt, torch.load(folder / "pytorch_model.bin", weights_only=True))
    for backend in ("auto", "transformers"):
        rc, _, err = cli(eval_args(folder, "--tokenizer", str(SPM), "--backend", backend), capsys)
        assert_one_line_error(rc, err, "eval", str(folder), "refused")
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_safetensors_index_naming_a_pickle_refused(
    tiny_native: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """A shard listed in model.safetensors.index.json replaced by a pickle is never unpickled."""
    from baichuan.hf import export_hf

    marker = tmp_path / "PWNED"
    folder = export_hf(tiny_native, tmp_path / "hf", max_shard_size="4MB")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    write_poison(shard, marker, fmt)
    rc, _, err = cli(COMMANDS["generate"](folder), capsys)
    assert_one_line_error(rc, err, "generate", shard.name, "not a readable safetensors file")
    assert not marker.exists()


# ------------------------------------------------------------------------ truncated safetensors
@pytest.mark.parametrize("command", [*sorted(COMMANDS), "train --init-from"])
def test_truncated_safetensors_one_line(
    tiny_native: Path, text_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_native, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    if command == "train --init-from":
        cmd = train_cmd(text_dir, tmp_path / "run", "--init-from", str(folder))
        cmd[cmd.index("--model"):cmd.index("--model") + 2] = []
        rc, err = train_in_process(cmd, capsys)
        command = "train"
    else:
        rc, _, err = cli(COMMANDS[command](folder), capsys)
    assert_one_line_error(rc, err, command, "model.safetensors", "not a readable safetensors file")


# ------------------------------------------------------------------------------ train --init-from
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("position", ["model_states", "pytorch_model.bin", "sharded", "index"])
def test_init_from_poisoned_refused(
    ckpts: Path, tiny_native: Path, text_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    position: str, fmt: str,
) -> None:
    marker = tmp_path / "PWNED"
    if position == "model_states":
        victim = poison_position(drop_model_folder(ckpts), position, marker, fmt)
        source = ckpts
    else:
        source = hf_bin_folder(tiny_native, tmp_path / "hf", sharded=position != "pytorch_model.bin")
        victim = {"pytorch_model.bin": "pytorch_model.bin", "sharded": "pytorch_model-00002-of-00002.bin",
                  "index": "pytorch_model.bin.index.json"}[position]
        write_poison(source / victim, marker, fmt)
    cmd = train_cmd(text_dir, tmp_path / "run", "--init-from", str(source))
    cmd[cmd.index("--model"):cmd.index("--model") + 2] = []
    rc, err = train_in_process(cmd, capsys)
    assert not marker.exists()
    assert_one_line_error(rc, err, "train", victim)


def test_init_from_deepspeed_folder_uses_model_folder(
    ckpts: Path, text_dir: Path, tmp_path: Path
) -> None:
    """--init-from a checkpoints folder whose DeepSpeed files are poisoned trains from model/ (a real
    run, one step), and the run's first loss is the trained model's, not a fresh one's."""
    marker = tmp_path / "PWNED"
    step = ckpts / STEP
    poison_position(step, "optim_states", marker, "zip")
    poison_position(step, "model_states", marker, "raw")
    cmd = train_cmd(text_dir, tmp_path / "run", "--init-from", str(ckpts), "--lr", "1e-9")
    cmd[cmd.index("--model"):cmd.index("--model") + 2] = []
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not marker.exists()
    from baichuan.checkpoint import load_model

    a = load_model(step / "model").state_dict()
    b = load_model(tmp_path / "run" / "checkpoints" / STEP / "model").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # lr 1e-9: the weights it started from


# ------------------------------------------------------------------------------------- --resume
MANIFEST_NAME = "files.sha256.json"


def test_manifest_records_every_file(trained: Path) -> None:
    from baichuan.checkpoint import manifest_problems

    step = trained / "checkpoints" / STEP
    files = json.loads((step / MANIFEST_NAME).read_text())["files"]
    on_disk = sorted(p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    assert sorted(files) == on_disk
    assert {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "model/model.safetensors",
            "trainer_state_rank00000.json", "rng_state_rank00000.safetensors"} <= set(files)
    assert manifest_problems(step) == []


def test_manifest_functions(tmp_path: Path) -> None:
    from baichuan.checkpoint import verify_manifest, write_manifest

    d = tmp_path / "ck"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"abc")
    (d / "sub" / "b.json").write_text("{}")
    write_manifest(d)
    verify_manifest(d)
    (d / "a.bin").write_bytes(b"abd")  # same size, other bytes
    with pytest.raises(ValueError, match=r"a\.bin has changed since the checkpoint was saved \(sha256"):
        verify_manifest(d)
    (d / "a.bin").write_bytes(b"abc")
    (d / "sub" / "b.json").unlink()
    with pytest.raises(ValueError, match=r"sub/b\.json is missing"):
        verify_manifest(d)
    (d / "sub" / "b.json").write_text("{}")
    (d / "extra.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"extra\.pt was not recorded"):
        verify_manifest(d)
    (d / "extra.pt").unlink()
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    manifest["files"]["../escape"] = {"size": 1, "sha256": "0" * 64}
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="refusing entry '../escape'"):
        verify_manifest(d)
    (d / MANIFEST_NAME).unlink()
    with pytest.raises(ValueError, match=f"{MANIFEST_NAME} is missing"):
        verify_manifest(d)


@pytest.mark.parametrize(
    "case", ["optim_states-raw", "optim_states-zip", "model_states-raw", "model_states-zip", "no-manifest", "extra-file"]
)
def test_resume_refuses_a_replaced_file(
    trained: Path, text_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """--resume: every file of the checkpoint is checked against files.sha256.json before DeepSpeed
    (which unpickles) loads it; a replaced, added or unrecorded file is refused, naming it."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    step = run / "checkpoints" / STEP
    marker = tmp_path / "PWNED"
    if case == "no-manifest":
        (step / MANIFEST_NAME).unlink()
        victim = MANIFEST_NAME
    elif case == "extra-file":
        victim = "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        write_poison(step / victim, marker, "zip")
    else:
        position, fmt = case.split("-")
        victim = poison_position(step, position, marker, fmt)
    cmd = train_cmd(text_dir, run, "--resume")
    cmd[cmd.index("--steps") + 1] = "2"
    rc, err = train_in_process(cmd, capsys)
    assert not marker.exists()
    assert_one_line_error(rc, err, "train", str(step / victim))


# --------------------------------------------------------------------- §5: errors a user can act on
@pytest.mark.parametrize("command", ["generate", "export-hf", "eval"])
def test_missing_model_folder_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    nope = tmp_path / "nope"
    args = {"generate": ["generate", "--model", str(nope), "hi"],
            "export-hf": ["export-hf", "--checkpoint", str(nope), "--output", str(tmp_path / "o")],
            "eval": eval_args(nope)}[command]
    rc, _, err = cli(args, capsys)
    line = assert_one_line_error(rc, err, command, str(nope))
    assert "tokenizer" not in line


@pytest.mark.parametrize("vocab", [500, 32005])
def test_eval_refuses_vocabulary_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str], vocab: int) -> None:
    """A tokenizer smaller (printed a score) or larger (IndexError) than the model's vocabulary."""
    torch.manual_seed(0)
    save_model(BaichuanForCausalLM(ModelConfig.preset("tiny", vocab_size=vocab)), tmp_path / "m")
    rc, _, err = cli(eval_args(tmp_path / "m", "--tokenizer", str(SPM)), capsys)
    assert_one_line_error(rc, err, "eval", "vocabulary mismatch", "32000", str(vocab))


def test_eval_options_and_data_errors(tiny_native: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from baichuan.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["eval"]
    helps = {a.dest: (a.help or "", a.default) for a in sub._actions}
    assert helps["shot"][1] == 5 and "default: 5" in helps["shot"][0]
    assert helps["batch_size"][1] == 16 and "default: 16" in helps["batch_size"][0]
    assert helps["subjects"][0] and "default" in helps["subjects"][0]
    (tmp_path / "eval-data").mkdir()
    rc, _, err = cli(["eval", "--task", "cmmlu", "--data-dir", str(tmp_path / "eval-data"), "--model",
                      str(tiny_native), "--no-progress"], capsys)
    assert_one_line_error(rc, err, "eval", f"expected the folder {tmp_path / 'eval-data' / 'cmmlu'}")
    rc, _, err = cli(["eval", "--task", "mmlu", "--data-dir", str(EVAL), "--model", str(tiny_native),
                      "--subjects", "astrology", "anatomy", "--no-progress"], capsys)
    assert_one_line_error(rc, err, "eval", "unknown subject(s) astrology", "valid: abstract_algebra, anatomy")


def test_cli_one_line_in_a_real_process(ckpts: Path, tmp_path: Path) -> None:
    """The headline case as a user runs it: nothing but one line on stderr, exit status 2."""
    marker = tmp_path / "PWNED"
    step = drop_model_folder(ckpts)
    poison_position(step, "model_states", marker, "zip")
    r = subprocess.run([sys.executable, "-m", "baichuan", "export-hf", "--checkpoint", str(ckpts), "--output",
                        str(tmp_path / "o"), "--tokenizer", str(SPM)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert_one_line_error(r.returncode, r.stderr, "export-hf", str(step / "mp_rank_00_model_states.pt"))
    assert not marker.exists()
