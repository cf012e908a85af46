"""Hostile and broken inputs, as a table: each row is one command line that must end in exactly one
``error:`` line and exit 2, write nothing and submit nothing. A new case is one new row.

Rows run in process (tests/conftest.py ``cli``). ``{w}`` in an argument is the work folder, where the
fixture below has laid out broken data files, broken run directories and tampered recipes. A
stand-in ``sbatch`` first on PATH records any submission, so "no job submitted" is checked too
(the real submissions are tested against the real cluster in tests/test_slurm.py).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from conftest import TESTS, cli, ok, run_dir_of
from hostile import tampered, assert_refused, hostile_folder

LEONARDO = ["hardware=leonardo_booster", "launcher=slurm", "hardware.slurm.account=IscrC_X", "run.output_root=runs"]
DRY = ["launcher=dry"]

# (id, module, arguments, text the error line must contain)
ROWS = [
    # composition: Hydra's own errors, types, choices, ranges, characters
    ("unknown option", "llamantino", ["model=llama3_8bb"], "llama3_8bb"),
    ("override syntax", "llamantino", ["stage.lora_r=8)"], "stage.lora_r=8)"),
    ("wrong type", "llamantino", ["stage.lora_r=abc", *DRY], "stage.lora_r"),
    ("misspelt key", "llamantino", ["stage.lora_rr=8", *DRY], "lora_rr"),
    ("adapter choice", "llamantino", ["stage.adapter=dora", *DRY], "[lora, qlora]"),
    ("scheduler choice", "llamantino", ["stage.lr_scheduler=cosinee", *DRY], "cosinee"),
    ("excess length choice", "llamantino", ["stage.excess_length_strategy=cut", *DRY], "[drop, truncate, raise]"),
    ("bad rows choice", "llamantino", ["stage.bad_rows=ignore", *DRY], "[strict, skip]"),
    ("launcher choice", "llamantino", ["launcher.name=cloud"], "[dry, local, slurm]"),
    ("accelerator choice", "llamantino", ["hardware.accelerator=tpu", *DRY], "hardware.accelerator"),
    ("zero micro batch", "llamantino", ["stage.micro_batch_size=0", *DRY], "stage.micro_batch_size=0 must be at least 1"),
    ("negative micro batch", "llamantino", ["stage.micro_batch_size=-3", *DRY], "must be at least 1"),
    ("dropout range", "llamantino", ["stage.lora_dropout=1.5", *DRY], "stage.lora_dropout=1.5"),
    ("zero learning rate", "llamantino", ["stage.learning_rate=0", *DRY], "stage.learning_rate=0.0 must be positive"),
    ("zero epochs", "llamantino", ["stage.num_epochs=0", *DRY], "stage.num_epochs=0.0 must be positive"),
    ("zero steps", "llamantino", ["stage.max_steps=0", *DRY], "stage.max_steps=0"),
    ("zero sequence", "llamantino", ["stage.sequence_len=0", *DRY], "stage.sequence_len=0"),
    ("zero nodes", "llamantino", ["hardware.nodes=0", *DRY], "hardware.nodes=0 must be at least 1"),
    ("negative nodes", "llamantino", ["hardware.nodes=-2", *DRY], "hardware.nodes=-2"),
    ("zero cpus", "llamantino", ["hardware.cpus_per_node=0", *DRY], "hardware.cpus_per_node=0"),
    ("gpu hardware without gpus", "llamantino", ["hardware=a100_80gb_x1", "hardware.gpus_per_node=0", *DRY],
     "hardware.gpus_per_node=0 must be at least 1"),
    ("privileged port", "llamantino", ["hardware.slurm.rdzv_port=80", *DRY], "hardware.slurm.rdzv_port=80"),
    ("zero signal lead", "llamantino", ["launcher.signal_lead_s=0", *DRY], "launcher.signal_lead_s=0"),
    ("zero array throttle", "llamantino", ["launcher.array_parallelism=0", *DRY], "launcher.array_parallelism=0"),
    ("negative shots", "llamantino", ["stage=eval", "eval.tasks=[{name: x, num_fewshot: -1}]", *DRY], "num_fewshot"),
    ("run name path", "llamantino", ["run.name=a/b", *DRY], "run.name"),
    ("run name dot", "llamantino", ["run.name=.hidden", *DRY], "run.name"),
    ("run name newline", "llamantino", ["run.name='a\nb'", *DRY], "line break"),
    ("notes control char", "llamantino", ["run.notes='bell\x07'", *DRY], "control character"),
    ("partition trailing newline", "llamantino", ["hardware.slurm.partition='debug\n'", *DRY], "one line"),
    ("account with space", "llamantino", [*LEONARDO[:2], "hardware.slurm.account='x y'", "launcher.submit=false",
                                           "run.output_root=runs"],
     "hardware.slurm.account='x y' is not valid in an #SBATCH line"),
    ("time format", "llamantino", [*LEONARDO, "launcher.submit=false", "launcher.time=99:99:99:99"], "launcher.time"),
    ("non-ascii digits", "llamantino", [*LEONARDO, "launcher.submit=false", "launcher.time=١٢:٠٠"], "launcher.time"),
    ("memory format", "llamantino", [*LEONARDO, "launcher.submit=false", "hardware.slurm.mem=lots"], "hardware.slurm.mem"),
    ("directive injection", "llamantino",
     [*LEONARDO, "launcher.submit=false", "hardware.slurm.extra_directives=['--chdir=/tmp;rm']"], "extra_directives"),
    ("env name", "llamantino", [*LEONARDO, "launcher.submit=false", "+hardware.slurm.env.BAD-NAME=x"],
     "hardware.slurm.env"),
    ("template name", "llamantino", [*LEONARDO, "launcher.submit=false", "launcher.template=nope.j2"],
     "launcher.template='nope.j2' is not in slurm/"),
    # checks before submission
    ("missing account", "llamantino", [*LEONARDO[:2], "run.output_root=runs"], "bills every job to a project"),
    ("qos nodes", "llamantino", [*LEONARDO, "hardware.nodes=100"], "allows 1-64 nodes"),
    ("qos time", "llamantino", [*LEONARDO, "hardware.slurm.qos=boost_qos_dbg", "launcher.time=01:00:00"],
     "exceeds QoS boost_qos_dbg"),
    ("offline hub data", "llamantino", [*LEONARDO, "model=llama2_7b", "stage=sft", "data=ultrachat_ita",
                                         "hardware.prepare.download_partition=null"],
     "have no internet"),
    ("offline hub eval", "llamantino", [*LEONARDO, "stage=eval", "eval=ita_leaderboard", "model=llama3_8b",
                                         "hardware.prepare.download_partition=null"],
     "eval tasks hellaswag_it"),
    ("eval mode choice", "llamantino", ["stage=eval", "eval=local_smoke", "eval.mode=latest", *DRY],
     "[leaderboard, current]"),
    ("script-exact on alpaca", "llamantino", ["stage=sft", "prompt.template=alpaca_it", "prompt.script_exact=true",
                                              *DRY],
     "prompt.script_exact=true reproduces the ANITA SFT and DPO scripts: it needs a Llama-3 chat template"),
    ("script-exact on text", "llamantino", ["stage=adapt", "data=it_text_sample", "prompt.template=anita",
                                            "prompt.script_exact=true", *DRY], "this stage has text data"),
    ("script-exact sft on answers only", "llamantino", ["stage=sft", "data=it_messages_sample", "prompt.template=anita",
                                                        "prompt.script_exact=true", "stage.train_on_inputs=false", *DRY],
     "trained on every token"),
    ("lora seed without adapter", "llamantino", ["stage=sft", "hardware=a100_80gb_x1", "stage.adapter=null",
                                                 "stage.on_unsupported=error", "stage.lora_seed=3407", *DRY],
     "stage.lora_seed=3407 seeds an adapter"),
    ("local multi-node", "llamantino", ["hardware=local_slurm", "launcher=local"], "multi-node"),
    ("local without gpus", "llamantino", ["hardware=a100_80gb_x1", "launcher=local"], "0 CUDA GPU(s)"),
    # data
    ("missing data file", "llamantino", ["data.path={w}/nope.jsonl", *DRY], "nope.jsonl: file not found"),
    ("empty data file", "llamantino", ["data.path={w}/empty.jsonl", *DRY], "empty.jsonl: file is empty"),
    ("malformed line", "llamantino", ["data.path={w}/malformed.jsonl", *DRY], "malformed.jsonl:2: malformed JSON"),
    ("invalid utf-8", "llamantino", ["data.path={w}/latin1.jsonl", *DRY], "invalid UTF-8"),
    ("deep nesting", "llamantino", ["data.path={w}/deep.jsonl", *DRY], "nested too deeply"),
    ("huge integer", "llamantino", ["data.path={w}/hugeint.jsonl", *DRY], "hugeint.jsonl:1"),
    ("lone surrogate", "llamantino", ["data.path={w}/surrogate.jsonl", *DRY], "lone surrogate"),
    ("row not an object", "llamantino", ["data.path={w}/list.jsonl", *DRY], "must be a JSON object"),
    ("csv file", "llamantino", ["data.path={w}/data.csv", *DRY], "unsupported file type"),
    ("format mismatch", "llamantino", ["data=it_preferences_sample", *DRY], "stage sft trains on"),
    ("unknown template", "llamantino", ["prompt.template=nope", *DRY], "unknown prompt template 'nope'"),
    ("refused fallback", "llamantino", ["stage.on_unsupported=error", *DRY], "stage.on_unsupported=error"),
    ("key axolotl drops", "llamantino", ["+stage.axolotl.lora_rrr=8", *DRY], "would drop them silently"),
    ("axolotl rejects", "llamantino", ["+stage.axolotl.dataloader_prefetch_factor=many", *DRY], "Axolotl 0.19.0 rejected"),
    ("merge without adapter", "llamantino", ["stage=merge", *DRY], "needs run.input_adapter"),
    ("eval of nothing", "llamantino", ["stage=eval", "run.input_model={w}/nowhere", *DRY], "neither a llamantino run"),
    ("unknown eval task", "llamantino", ["stage=eval", "eval.tasks=[{name: arc_itt}]", *DRY], "no task 'arc_itt'"),
    ("bad sweep point", "llamantino", ["-m", "stage.lora_r=8,0", *DRY], "stage.lora_r=0 must be at least 1"),
    ("sweep of pipelines", "llamantino", ["-m", "pipeline=tiny", "stage.lora_r=8,16", *DRY], "sweep of pipelines"),
    ("pipeline lineage", "llamantino", [f"hydra.searchpath=[file://{TESTS / 'conf'}]", "pipeline=no_merge", *DRY],
     "pipeline step dpo"),
    # the other commands
    ("check missing file", "data", ["check", "{w}/nope.jsonl", "--format", "text"], "file not found"),
    ("check bad rows", "data", ["check", "{w}/bad_rows.jsonl", "--format", "conversations"], "bad row(s)"),
    ("check all bad", "data", ["check", "{w}/all_bad.jsonl", "--format", "conversations"],
     "no valid row left"),
    ("check needs format", "data", ["check", "{w}/bad_rows.jsonl"], "give --format"),
    ("preview hub data", "data", ["preview", "clean_mc4_it"], "lives on the hub"),
    ("prepare no run", "data", ["prepare", "{w}/nowhere"], "not a run directory"),
    ("pin unknown", "data", ["pin", "nope"], "unknown data 'nope'"),
    ("status broken status", "status", ["{w}/broken_status"], "status.json is not readable JSON"),
    ("status broken pipeline", "status", ["{w}/broken_pipeline"], "pipeline.json is not readable JSON"),
    ("collect broken sweep", "collect", ["{w}/broken_sweep"], "sweep.json is not readable JSON"),
    ("compare nothing", "compare", ["{w}/nowhere"], "neither an eval run nor a folder"),
    ("launch nowhere", "launch", ["{w}/nowhere"], "not a llamantino run directory"),
    ("launch dry run", "launch", ["{w}/dry_run"], "pass --launcher local or --launcher slurm"),
    ("launch without script", "launch", ["{w}/dry_run", "--launcher", "slurm"], "has no job.sbatch"),
    ("launch broken config", "launch", ["{w}/broken_config"], "config.yaml: not a readable YAML file"),
    ("finish nowhere", "llamantino.job.finish", ["{w}/nowhere", "--rc", "0"], "provenance.json not found"),
    ("evaluate nowhere", "llamantino.job.evaluate", ["{w}/nowhere"], "eval.json not found"),
    ("plan eval without a GPU", "plan", ["stage=eval", "hardware=cpu"], "no GPU peak throughput"),
    ("plan cpu", "plan", [], "no GPU peak throughput"),
    ("plan bad override", "plan", ["stage.lora_r=0"], "stage.lora_r=0 must be at least 1"),
    ("export nowhere", "recipe", ["export", "{w}/nowhere", "-o", "{w}/out.yaml"], "not a llamantino run"),
    ("export secret", "recipe", ["export", "{w}/leaky_run", "-o", "{w}/out.yaml"], "look like secrets"),
    ("diff unknown", "recipe", ["diff", "{w}/dry_run", "nope"], "not a run directory, a recipe file or a preset"),
    ("import missing file", "recipe", ["import", "{w}/nope.yaml", "--dest", "{w}/dest"], "nope.yaml"),
    ("import garbage", "recipe", ["import", "{w}/garbage.yaml", "--dest", "{w}/dest"], "not a readable recipe"),
    ("import truncated", "recipe", ["import", "{w}/truncated.yaml", "--dest", "{w}/dest"], "truncated recipe"),
    ("import checksum", "recipe", ["import", "{w}/edited.yaml", "--dest", "{w}/dest"], "checksum mismatch"),
    ("import target", "recipe", ["import", "{w}/target.yaml", "--dest", "{w}/dest"], "instantiation keys"),
    ("import input model", "recipe", ["import", "{w}/input_model.yaml", "--dest", "{w}/dest"],
     "--allow run.input_model"),
    ("import preload", "recipe", ["import", "{w}/preload.yaml", "--dest", "{w}/dest"], "LD_PRELOAD"),
    ("import directive", "recipe", ["import", "{w}/chdir.yaml", "--dest", "{w}/dest"],
     "is not a directive a shared recipe may add"),
    ("import hub push", "recipe", ["import", "{w}/hub_push.yaml", "--dest", "{w}/dest"],
     "stage.axolotl.hub_model_id"),
    ("import data path", "recipe", ["import", "{w}/data_path.yaml", "--dest", "{w}/dest"],
     "leaves datasets_ita"),
    ("import include path", "recipe", ["import", "{w}/include_path.yaml", "--dest", "{w}/dest"],
     "eval.include_path"),
    ("import name newline", "recipe", ["import", "{w}/name_newline.yaml", "--dest", "{w}/dest"],
     "line break"),
    ("import overrides type", "recipe", ["import", "{w}/overrides_type.yaml", "--dest", "{w}/dest"],
     "wrong type"),
    ("import without its yaml", "recipe", ["import", "{w}/no_yaml.yaml", "--dest", "{w}/dest"],
     "the recipe has no axolotl.yaml to compare"),
    ("zero time limit", "llamantino", ["launcher.time=0", *DRY], "under a minute"),
    ("planner mfu", "plan", ["experiment=llamantino2_7b_adapt", "--mfu", "0"], "--mfu 0.0 must be a fraction"),
    ("tracking folder store", "llamantino", ["tracking=mlflow", "tracking.uri=file:./mlruns", *DRY],
     "MLflow 3 no longer writes folder stores"),
    ("import remote tracking", "recipe", ["import", "{w}/tracking.yaml", "--dest", "{w}/dest"],
     "--allow tracking"),
    ("import version", "recipe", ["import", "{w}/version.yaml", "--dest", "{w}/dest"], "made with axolotl"),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("hostile")
    files = {
        "empty.jsonl": b"",
        "malformed.jsonl": b'{"istruzione": "a", "risposta": "b"}\n{"istruzione": "a", "risposta": \n',
        "latin1.jsonl": '{"istruzione": "perch\u00e9", "risposta": "b"}\n'.encode("latin-1"),
        "deep.jsonl": ("[" * 100_000 + "]" * 100_000 + "\n").encode(),
        "hugeint.jsonl": ('{"istruzione": "a", "risposta": "b", "n": ' + "9" * 5000 + "}\n").encode(),
        "surrogate.jsonl": b'{"istruzione": "a\\ud800", "risposta": "b"}\n',
        "list.jsonl": b'["instruction", "output"]\n',
        "data.csv": b"instruction,output\na,b\n",
        "bad_rows.jsonl": b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
                          b'{"messages": [{"role": "robot", "content": "x"}]}\n',
        "all_bad.jsonl": b'{"messages": [{"role": "robot", "content": "x"}]}\n',
        "garbage.yaml": b"\x00\x01: [\n",
        "broken_status/provenance.json": b"{}",
        "broken_status/status.json": b"{oops",
        "broken_pipeline/pipeline.json": b"[",
        "broken_sweep/sweep.json": b"{",
        "broken_config/config.yaml": b"stage: [\n",
    }
    for name, content in files.items():
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_bytes(content)
    dry = run_dir_of(ok(cli("launcher=dry", "stage.max_steps=1", cwd=w)))
    os.rename(dry, w / "dry_run")

    shutil.rmtree(w / "runs")
    leaky = w / "leaky_run"
    shutil.copytree(w / "dry_run", leaky, symlinks=True)
    config = yaml.safe_load((leaky / "config.yaml").read_text())
    config["hardware"]["slurm"]["env"]["WANDB_API_KEY"] = "0123456789abcdef"
    (leaky / "config.yaml").write_text(yaml.safe_dump(config))
    ok(cli("export", str(w / "dry_run"), "-o", str(w / "good.yaml"), verb="recipe", cwd=w))
    good = yaml.safe_load((w / "good.yaml").read_text())
    text = (w / "good.yaml").read_text()
    (w / "truncated.yaml").write_text(yaml.safe_dump({k: v for k, v in good.items() if k != "config"}))
    (w / "edited.yaml").write_text(text.replace("lora_r: 64", "lora_r: 65", 1))
    variants = {
        "target": lambda r: r["config"]["stage"]["axolotl"].update({"_target_": "os.system"}),
        "input_model": lambda r: r["config"]["run"].update({"input_model": "/etc"}),
        "preload": lambda r: r["config"]["hardware"]["slurm"]["env"].update({"LD_PRELOAD": "/tmp/x.so"}),
        "chdir": lambda r: r["config"]["hardware"]["slurm"].update({"extra_directives": ["--chdir=/tmp"]}),
        "hub_push": lambda r: r["config"]["stage"]["axolotl"].update({"hub_model_id": "someone/exfiltrated"}),
        "data_path": lambda r: r["config"]["data"].update({"path": "../../../etc/passwd"}),
        "include_path": lambda r: r["config"]["eval"].update({"include_path": "/etc"}),
        "name_newline": lambda r: r["config"]["run"].update({"name": "x\nkey: injected"}),
        "overrides_type": lambda r: r.update({"overrides": "stage=dpo"}),
        "version": lambda r: r["versions"].update({"axolotl": "0.12.0"}),
        "no_yaml": lambda r: r.update({"axolotl_yaml": None}),
        "tracking": lambda r: r["config"].update({"tracking": {**r["config"]["tracking"], "name": "mlflow",
                                                               "uri": "https://collector.example"}}),
    }
    for name, edit in variants.items():
        (w / f"{name}.yaml").write_text(tampered(good, edit))
    return hostile_folder(w)


def test_the_table_is_large_enough():
    assert len(ROWS) >= 60 and len({row[0] for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("name, module, args, needle", ROWS, ids=[row[0] for row in ROWS])
def test_hostile_input_is_one_error_line_and_leaves_nothing(work, name, module, args, needle):
    assert_refused(work, module, args, needle)


def test_allow_names_the_one_setting_the_user_accepts(work, tmp_path):
    """The refusal names a flag; with it, that setting (and only it) is accepted."""
    dest = tmp_path / "dest"
    refused = cli("import", str(work / "preload.yaml"), "--dest", str(dest), "--allow", "run.input_model",
                  verb="recipe", cwd=work)
    assert refused.returncode == 2 and "LD_PRELOAD" in refused.stderr
    run_dir = run_dir_of(ok(cli("import", str(work / "preload.yaml"), "--dest", str(dest), "--allow",
                                "hardware.slurm.env.LD_PRELOAD", verb="recipe", cwd=work)))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["hardware"]["slurm"]["env"]["LD_PRELOAD"] == "/tmp/x.so"


def test_mlflow_tracking_renders_and_validates(compose, tmp_path):
    from conftest import build

    run = build(compose("tracking=mlflow", "tracking.uri=http://127.0.0.1:5000", "tracking.tags=[baseline]",
                        "launcher=dry"), tmp_path / "run", overrides=["tracking=mlflow", "stage.lora_r=8"])
    assert (run.recipe["use_mlflow"], run.recipe["mlflow_tracking_uri"], run.recipe["mlflow_experiment_name"]) == (
        True, "http://127.0.0.1:5000", "llamantino")
    tags = json.loads(run.provenance.env["MLFLOW_TAGS"])
    assert tags["model"] == "tiny_llama" and tags["baseline"] == "" and tags["stage.lora_r"] == "8"
    assert "tracking" not in tags and not any("=" in key for key in tags)
    assert run.provenance.env["WANDB_MODE"] == "disabled"
