"""Pipelines render every step and check lineage before anything is written."""

from __future__ import annotations

from conftest import TESTS, cli, ok, read_json, run_dir_of


def test_lineage_error_names_the_step_and_writes_nothing(tmp_path):
    proc = cli(f"hydra.searchpath=[file://{TESTS / 'conf'}]", "pipeline=no_merge", "launcher=dry", cwd=tmp_path)
    assert proc.returncode == 2
    assert "pipeline step dpo" in proc.stderr and "Merge it into its bf16 base first" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_full_finetune_after_a_merge_on_leonardo_renders_fsdp(tmp_path):
    proc = ok(cli("pipeline=llamantino2", "model=llama2_7b", "hardware=leonardo_booster", "hardware.nodes=2",
                  "launcher=slurm", "launcher.submit=false", "run.output_root=runs", cwd=tmp_path))
    pipeline_dir = run_dir_of(proc)
    assert [s["name"] for s in read_json(pipeline_dir / "pipeline.json")["steps"]] == ["adapt", "merge", "sft", "release"]
    sft = (pipeline_dir / "sft" / "axolotl.yaml").read_text()
    assert "fsdp_version: 2" in sft and "base_model: inputs/base_model" in sft and "adapter:" not in sft
    assert (pipeline_dir / "sft" / "inputs" / "base_model").resolve() == (pipeline_dir / "merge" / "output" / "merged").resolve()
    merge = (pipeline_dir / "merge" / "axolotl.yaml").read_text()
    assert "load_in_4bit: false" in merge and "base_model: meta-llama/Llama-2-7b-hf" in merge
    # the adapt step trains QLoRA on 2 x 4 A100 with DDP; the merge loads the bf16 base
    assert "load_in_4bit: true" in (pipeline_dir / "adapt" / "axolotl.yaml").read_text()


def test_a_completed_step_with_another_recipe_is_not_silently_replaced(tmp_path):
    args = ("pipeline=tiny", "launcher=dry")
    pipeline_dir = run_dir_of(ok(cli(*args, cwd=tmp_path)))
    (pipeline_dir / "adapt" / "status.json").write_text('{"state": "COMPLETED"}')
    proc = cli(*args, "stage.learning_rate=1e-3", cwd=tmp_path)
    assert proc.returncode == 2 and "already completed" in proc.stderr and "run.name" in proc.stderr
