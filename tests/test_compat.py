"""The timm compatibility matrix (spa.bench.compat) on three small models of different families: a
CNN with depthwise convs, a ViT, and a hybrid (convolutions and attention, whose channel trace blows
up and which the mlp structure prunes); every stage is checked, a failure is recorded with its stage
and the matrix goes on."""
from __future__ import annotations

import pandas as pd
import pytest
from scripts_path import load_script

from spa.bench.compat import COLUMNS, STAGE_COLUMNS, check_model, independent_count, isolated, passes


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("compat")
    return {name: isolated(name, family, "splora_r8", out, repeats=2, timeout_s=240, memory_gib=12)
            for family, name in (("EfficientNet", "test_efficientnet"), ("ViT", "test_vit"),
                                 ("CoAtNet", "test_coatnet"))}


@pytest.mark.parametrize("name", ["test_efficientnet", "test_vit", "test_coatnet"])
def test_a_cnn_with_depthwise_convs_a_vit_and_a_hybrid_pass_every_stage(rows, name):
    row = rows[name]
    assert list(row) == COLUMNS and passes(row), row
    assert [row[s] for s in STAGE_COLUMNS] == ["ok"] * len(STAGE_COLUMNS)
    assert float(row["fuse_max_abs"]) <= 1e-4 and float(row["ort_max_abs"]) <= 1e-4
    assert float(row["macs_ratio"]) < 1 and float(row["latency_ratio"]) > 0


def test_left_out_counts_the_layers_a_structure_never_prunes(rows):
    """Every conv / linear outside the head carries an adapter; the CNN and the ViT prune every unit,
    the hybrid (attention: the mlp structure) only its MLP blocks' hidden channels."""
    assert rows["test_efficientnet"]["left_out"] == rows["test_vit"]["left_out"] == 0
    assert 0.4 < float(rows["test_efficientnet"]["macs_ratio"]) < 1    # 30 % of filters gone
    assert rows["test_coatnet"]["left_out"] > 0


def test_a_failing_stage_names_itself_and_the_later_stages_are_not_run(tmp_path, monkeypatch):
    from spa.bench import compat

    def wrong(row, state, workdir, repeats):
        raise compat.StageError("fused model differs by 1.00e+00 > 0.0001")
    monkeypatch.setitem(compat.STAGE_FUNCTIONS, "fuse", wrong)
    row = check_model("test_vit", "ViT", "splora_r8", tmp_path, repeats=2).as_dict()
    assert [row[s] for s in STAGE_COLUMNS[:STAGE_COLUMNS.index("fuse")]] == ["ok"] * 5
    assert row["fuse"] == "StageError" and row["error"] == "fuse: StageError: fused model differs by 1.00e+00 > 0.0001"
    assert all(row[s] == "" for s in STAGE_COLUMNS[STAGE_COLUMNS.index("fuse") + 1:]) and not passes(row)


def test_the_count_stage_is_independent_of_count_parameters(tmp_path):
    """The formula count r·(in + out) per SPLoRA layer catches an adapter tensor of the wrong size."""
    import timm

    from spa.adapters import adapter_layers, apply_adapter
    from spa.metrics import count_parameters
    model = apply_adapter(timm.create_model("test_vit", num_classes=10), "splora", rank=8)
    assert independent_count(model, 8) == count_parameters(model).trainable
    assert independent_count(model, 4) != count_parameters(model).trainable       # a wrong rank is noticed
    row = check_model("test_vit", "ViT", "lora_r8", tmp_path, repeats=2).as_dict()
    assert row["prune"] == "n/a" and row["latency_ratio"] == "n/a" and passes(row)
    assert len(adapter_layers(model)) > 0


def test_the_script_writes_the_matrix_grouped_by_family(tmp_path, monkeypatch):
    compat = load_script("compat")
    fake = [{**{c: "ok" for c in COLUMNS}, "model": "a", "family": "F", "adapter": "splora_r8", "error": ""},
            {**{c: "" for c in COLUMNS}, "model": "b", "family": "G", "adapter": "splora_r8", "build": "ok",
             "adapt": "TypeError", "error": "adapt: TypeError: grouped conv"}]
    monkeypatch.setattr(compat, "matrix", lambda *args, **kwargs: fake)
    monkeypatch.setattr("sys.argv", ["compat.py", "--models", "a,b", "--out", str(tmp_path)])
    compat.main()
    table = pd.read_csv(tmp_path / "timm_compat.csv", keep_default_na=False)
    assert list(table.columns) == COLUMNS and list(table["model"]) == ["a", "b"]
    text = (tmp_path / "timm_compat.md").read_text()
    assert text.startswith("1 of 2 (model, adapter) rows pass every stage (50 %)")
    assert "| F        | a       | splora_r8 | all ok" in text
    assert "| G        | b       | splora_r8 | fails at adapt" in text
    assert "adapt: TypeError: grouped conv" in text and "onnxruntime None" not in text
