"""Broken checkpoint directories get the package's error, naming the file or setting and the
fix; the checkpoint check refuses garbage; ``tie-tracing check`` prints what it finds.

These build a tiny Llama checkpoint (the DiffuLLaMA layout: transformers' own classes, no
upstream files needed) and break one thing at a time.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import upstream_checkpoints as U

import tie_tracing as tt
from tie_tracing.core.check import check_model
from tie_tracing.core.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    DeviceNotAvailableError,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return U.build_diffullama(tmp_path_factory.mktemp("ckpt") / "diffullama")


@pytest.fixture
def ckpt(source, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(source, path)
    return path


def load(path, **kw):
    return tt.load_model(path, family="diffullama", progress=False, **kw)


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_the_intact_checkpoint_loads_and_passes(ckpt):
    model = load(ckpt)
    assert check_model(model).ok and model.info["compat_fixes"] == []


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(hidden_size=48), "disagrees with the weights"),
        (dict(num_hidden_layers=1), "no place for"),
        (dict(num_hidden_layers=3), "lacks"),
        (dict(vocab_size=600), "disagrees with the weights"),
    ],
)
def test_config_that_disagrees_with_the_weights(ckpt, change, message):
    _edit_config(ckpt, **change)
    with pytest.raises(CheckpointError, match=message) as info:
        load(ckpt)
    assert "config.json" in str(info.value) or "weights the model needs" in str(info.value)


def test_config_json_that_does_not_parse(ckpt):
    (ckpt / "config.json").write_text('{"hidden_size": 32,, }')
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON .* line 1"):
        load(ckpt)


def test_config_json_missing(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match="has no config.json; copy"):
        load(ckpt)


def test_tie_tracing_json_that_does_not_parse(ckpt):
    (ckpt / "tie_tracing.json").write_text("{family: diffullama}")
    with pytest.raises(CheckpointError, match=r"tie_tracing\.json is not valid JSON"):
        load(ckpt)
    (ckpt / "tie_tracing.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not an object"):
        load(ckpt)


def test_tokenizer_file_that_does_not_parse(ckpt):
    (ckpt / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is not valid JSON"):
        load(ckpt)


def test_tokenizer_files_missing(ckpt):
    for f in ckpt.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer files"):
        load(ckpt)


def test_remote_code_file_missing(ckpt):
    _edit_config(ckpt, auto_map={"AutoModel": "modeling_gone.GoneModel"})
    with pytest.raises(CheckpointError, match=r"modeling_gone\.py"):
        tt.load_model(ckpt, family="diffullama", trust_remote_code=True, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("setting", ["device", "device_map"])
def test_device_the_machine_does_not_have(ckpt, setting):
    with pytest.raises(DeviceNotAvailableError, match=f"{setting}='cuda'.*no CUDA device"):
        load(ckpt, **{setting: "cuda"})
    with pytest.raises(DeviceNotAvailableError, match="not a device name"):
        load(ckpt, **{setting: "gpu0"})


def test_device_index_beyond_the_machine(ckpt):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceNotAvailableError, match=f"device='cuda:{count + 3}'"):
        load(ckpt, device=f"cuda:{count + 3}")


# -- the checkpoint check ------------------------------------------------------------------


def test_check_refuses_an_uninitialised_buffer(ckpt):
    """A rotary inv_freq holding what never-written memory reads as (Dream under transformers
    5 without the fix) fails the check; load_model refuses it."""
    model = load(ckpt)
    rotary = next(m for m in model._module.modules() if "inv_freq" in m._buffers)
    garbage = torch.tensor([-7.8e-22, 4.6e-41, 1.2e-41, 0.0] * (rotary.inv_freq.numel() // 4))
    rotary.inv_freq.copy_(garbage[: rotary.inv_freq.numel()])
    report = check_model(model)
    assert not report.ok
    assert [f.check for f in report.failures] == ["initialised"]
    assert "inv_freq" in report.failures[0].detail
    with pytest.raises(CheckpointError, match="initialised: .*inv_freq"):
        report.raise_for_failures()


def test_check_refuses_non_finite_weights(ckpt):
    model = load(ckpt)
    with torch.no_grad():
        model._module.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    report = check_model(model)
    assert {f.check for f in report.failures} >= {"finite", "deterministic"}


def test_check_refuses_causal_attention_for_an_mdlm_family(ckpt):
    """The same Llama checkpoint as an MDLM family that passes no full mask attends causally."""
    with pytest.raises(CheckpointError, match="bidirectional: .*causal"):
        tt.load_model(ckpt, family="tiny-mdlm", progress=False)
    model = tt.load_model(ckpt, family="tiny-mdlm", progress=False, check=False)
    assert [f.check for f in check_model(model).failures] == ["bidirectional"]


def test_check_refuses_non_deterministic_logits(ckpt):
    model = load(ckpt)
    model._module.train()
    for layer in model._module.model.layers:
        layer.self_attn.attention_dropout = 0.5
    report = check_model(model)
    assert "deterministic" in {f.check for f in report.failures}


def test_check_refuses_a_mask_id_outside_the_vocabulary(ckpt):
    with pytest.raises(CheckpointError, match="mask_id: mask id 9999 lies outside"):
        load(ckpt, mask_token_id=9999)


def test_check_refuses_a_tokenizer_mask_that_disagrees(ckpt):
    with pytest.raises(CheckpointError, match="tokenizer_mask: .*mask id 7, but the tokenizer"):
        load(ckpt, mask_token_id=7)
    _edit_config(ckpt, mask_token_id=42)
    with pytest.raises(CheckpointError, match="config.mask_token_id is 42"):
        load(ckpt)


# -- tie-tracing check ---------------------------------------------------------------------


def test_cli_check_prints_the_findings(ckpt, capsys):
    from tie_tracing.cli import main

    assert main(["check", "--model", str(ckpt), "--family", "diffullama", "--quiet"]) == 0
    out = capsys.readouterr().out
    for text in ("family         diffullama", "mask id        500", "EOS id         501",
                 "dtype          float32", "[ok  ] bidirectional", "checkpoint ok"):  # fmt: skip
        assert text in out
    assert main(["check", "--model", str(ckpt), "--family", "tiny-mdlm", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] bidirectional" in out and "fix: " in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/nonexistent/dir"], "nor a directory"),
        (["--model", "{ckpt}", "--family", "nope"], "not a known family"),
        (["--model", "{ckpt}", "--device", "gpu0"], "not a device name"),
    ],
)
def test_cli_check_validates_arguments_before_loading(ckpt, capsys, monkeypatch, argv, message):
    from tie_tracing.cli import main
    from tie_tracing.core import model as model_module

    def never(*_a, **_k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(model_module, "load_model", never)
    argv = [a.format(ckpt=ckpt) for a in argv]
    assert main(["check", *argv]) == 1
    assert message in capsys.readouterr().err


def test_cli_check_module_imports_no_torch():
    """The check command's own module defers torch to run time (``--help`` needs none of it)."""
    import subprocess
    import sys

    file = U.ROOT / "tie_tracing" / "cli_check.py"
    code = (
        "import sys, importlib.util; "
        f"spec = importlib.util.spec_from_file_location('cc', {str(file)!r}); "
        "m = importlib.util.module_from_spec(spec); "
        "spec.loader.exec_module(m); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
