"""Stage-2 methods come from a registry: a method defined here alone runs through ``plmkit transfer``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from plmkit.backbones import load_encoder
from plmkit.cli import main
from plmkit.mtl.adapters import AdapterConfig, attach_adapters, save_adapter
from plmkit.mtl.fusion import FusionConfig
from plmkit.mtl.registry import (
    TransferMethod,
    register_transfer_method,
    transfer_method,
    transfer_methods,
    unregister_transfer_method,
)
from plmkit.mtl.scalearn import ScaLearnConfig
from plmkit.mtl.transfer import Composition, SourceRef, attach_transfer, load_transfer, save_transfer
from tests.test_cli import _write_task


@dataclass
class MeanConfig:
    default_learning_rate: ClassVar[float] = 1e-2
    cli_flags: ClassVar[dict[str, str]] = {"gain": "mean_gain"}

    gain: float = 1.0
    """Initial gain on the mean of the source outputs."""


class MeanBlock(nn.Module):
    """o = g · mean_i u_i + r with one learnt scalar g per layer."""

    def __init__(self, sources: nn.Module, config: MeanConfig) -> None:
        super().__init__()
        self.sources = sources
        self.gain = nn.Parameter(torch.tensor([config.gain]))  # 1-d: the engine flattens parameters

    def forward(self, adapter_input: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.gain * self.sources.outputs(adapter_input).mean(2) + residual

    def regularization(self) -> None:
        return None

    def source_weights(self) -> torch.Tensor:
        return self.gain.detach().expand(self.sources.num_sources) / self.sources.num_sources


@pytest.fixture
def mean_method():
    register_transfer_method(TransferMethod("mean", MeanConfig, build_block=lambda s, c, shared: MeanBlock(s, c)))
    yield
    unregister_transfer_method("mean")


def test_a_method_registered_in_a_test_runs_end_to_end(tmp_path, tiny_backbone_dir, mean_method, capsys):
    run = tmp_path / "run"
    args = ["transfer", "--sources", str(_write_task(tmp_path / "src_a")), "--target", str(_write_task(tmp_path / "t")),
            "--backbone", str(tiny_backbone_dir), "--store", str(tmp_path / "store"), "--epochs", "1",
            "--batch-size", "16", "--max-length", "32", "--no-progress", "--method", "mean", "--mean-gain", "0.5",
            "--output-dir", str(run)]
    assert main(args) == 0
    assert "mean" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    row = next(r for r in metrics["summary"] if r["method"] == "mean")  # after the adapter baseline's row
    assert row["transfer_parameters"] == 2  # one gain per layer
    first = next(r for r in metrics["runs"] if r["method"] == "mean")
    assert first["learning_rate"] == pytest.approx(1e-2)  # the config's default
    saved = json.loads((run / "model-mean" / "config.json").read_text())["composition"]
    assert saved["method"] == "mean" and saved["config"] == {"gain": 0.5}
    assert [s["kind"] for s in saved["sources"]] == ["adapter", "adapter"]
    backbone = load_encoder(str(tiny_backbone_dir))
    handle, _, _ = load_transfer(run / "model-mean", backbone.model, str(tiny_backbone_dir))
    gains = [block.gain.item() for block in handle.blocks]
    assert all(g != pytest.approx(0.5) for g in gains)  # trained, then reloaded
    assert (run / "source_weights_mean.png").is_file()


def test_registry_lists_builtins_with_their_learning_rates():
    methods = transfer_methods()
    assert list(methods)[:2] == ["adapter", "full"]
    assert {m: methods[m].default_learning_rate for m in ("adapter", "full", "fusion", "scalearn++")} == {
        "adapter": 1e-3, "full": 2e-5, "fusion": 5e-5, "scalearn++": 6e-3}
    assert not methods["full"].uses_sources and methods["scalearn-uniform"].uses_sources
    config = transfer_method("scalearn-uniform++").make_config({"scalearn_dropout": 0.2, "fusion_value": False})
    assert config == ScaLearnConfig(variant="scalearn-uniform++", dropout=0.2)
    with pytest.raises(ValueError, match="unknown transfer method 'lora'"):
        transfer_method("lora")


def test_old_flag_names_still_parse():
    from plmkit.cli import build_parser

    args = build_parser().parse_args(["transfer", "--no-fusion-value", "--fusion-temperature",
                                      "--scalearn-dropout", "0.1", "--scalearn-mean-one", "0.5"])
    assert (args.fusion_value, args.fusion_temperature, args.scalearn_dropout, args.scalearn_mean_one) == (
        False, True, 0.1, 0.5)


@pytest.mark.parametrize(("method", "config"), [("fusion", FusionConfig(temperature=True)),
                                                ("scalearn++", ScaLearnConfig(variant="scalearn++"))])
def test_setups_saved_in_the_earlier_layout_still_load(make_encoder, tmp_path, method, config):
    backbone = make_encoder("bert")
    refs = []
    for i in range(2):
        source = make_encoder("bert")
        refs.append(SourceRef(f"s{i}", str(save_adapter(tmp_path / f"s{i}", attach_adapters(
            source.model, AdapterConfig(reduction_factor=4)), backbone_name="tiny-bert"))))
    handle = attach_transfer(backbone.model, Composition(method, refs, config=config), "tiny-bert")
    with torch.no_grad():
        for p in handle.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_transfer(tmp_path / "t", handle, backbone_name="tiny-bert")
    # rewrite config.json as the earlier release wrote it: one field per method, sources without kind
    meta = json.loads((tmp_path / "t" / "config.json").read_text())
    comp = meta["composition"]
    meta["composition"] = {"method": method, "sources": [{k: s[k] for k in ("name", "path", "key")}
                                                         for s in comp["sources"]],
                           "fusion": comp["config"] if method == "fusion" else None,
                           "scalearn": comp["config"] if method != "fusion" else None, "extra": {}}
    (tmp_path / "t" / "config.json").write_text(json.dumps(meta))
    fresh = make_encoder("bert")
    loaded, _, _ = load_transfer(tmp_path / "t", fresh.model, "tiny-bert")
    assert loaded.composition.config == config
    for key, value in handle.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    batch = backbone.tokenizer(["the movie was fun"], return_tensors="pt")
    backbone.model.eval()
    fresh.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(**batch).last_hidden_state, backbone.model(**batch).last_hidden_state)
