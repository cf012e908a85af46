"""Hostile values, as a table (issue 20, "Values" and "Secrets"): numbers that are not finite or out of
range, sequences longer than the model's context, names that look like other names, and
interpolations that would copy the environment into a run's files. Each row ends in exactly one
``error:`` line and exit 2, writes nothing and submits nothing (tests/hostile.py).

Below the table: what a row cannot say (the NFC form is the folder's name, RoPE scaling lets a longer
sequence through Axolotl's validation, the planner's memory grows with the sequence and the micro batch,
environment values reach a job script as literal text: checked by running the script's exports in bash).
"""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import build, cli, ok, run_dir_of
from hostile import assert_refused, hostile_folder

DRY = ["launcher=dry"]
DPO = ["stage=dpo", *DRY]
PLAN = ["experiment=llamantino2_7b_adapt"]
TOKEN = "hf_" + "Q" * 34  # the shape of a Hugging Face token
PIPELINE = ["hydra.searchpath=[file://{w}/conf]", "pipeline=bidi", *DRY]

# (id, module or verb, arguments, text the error line must contain)
ROWS = [
    # numbers: finite, and in the range each field declares
    ("learning rate inf", "llamantino", ["stage.learning_rate=inf", *DRY], "stage.learning_rate=inf is not a finite number"),
    ("learning rate nan", "llamantino", ["stage.learning_rate=nan", *DRY], "stage.learning_rate=nan is not a finite number"),
    ("epochs inf", "llamantino", ["stage.num_epochs=inf", *DRY], "stage.num_epochs=inf is not a finite number"),
    ("rl beta inf", "llamantino", ["stage.rl_beta=inf", *DPO], "stage.rl_beta=inf is not a finite number"),
    ("adapter rate inf", "llamantino", ["stage.adapter_learning_rate=inf", *DRY], "stage.adapter_learning_rate=inf"),
    ("negative warmup ratio", "llamantino", ["stage.warmup_ratio=-0.1", *DRY], "stage.warmup_ratio=-0.1 must be in [0, 1)"),
    ("warmup ratio over 1", "llamantino", ["stage.warmup_ratio=1.5", *DRY], "stage.warmup_ratio=1.5 must be in [0, 1)"),
    ("negative weight decay", "llamantino", ["stage.weight_decay=-1", *DRY], "stage.weight_decay=-1.0 must not be negative"),
    ("negative grad norm", "llamantino", ["stage.max_grad_norm=-1", *DRY], "stage.max_grad_norm=-1.0 must not be negative"),
    ("grad norm inf", "llamantino", ["stage.max_grad_norm=inf", *DRY], "stage.max_grad_norm=inf is not a finite number"),
    ("dropout nan", "llamantino", ["stage.lora_dropout=nan", *DRY], "stage.lora_dropout=nan is not a finite number"),
    ("validation split inf", "llamantino", ["stage.val_set_size=inf", *DRY], "stage.val_set_size=inf"),
    ("axolotl passthrough inf", "llamantino", ["+stage.axolotl.adam_beta2=inf", *DRY],
     "stage.axolotl.adam_beta2=inf is not a finite number"),
    ("axolotl passthrough nested nan", "llamantino", ["+stage.axolotl.optim_args={betas:[0.9,nan]}", *DRY],
     "stage.axolotl.optim_args.betas[1]=nan"),
    ("write bandwidth inf", "llamantino", ["hardware.storage.write_gbps=inf", *DRY], "hardware.storage.write_gbps=inf"),
    ("gpu memory inf", "llamantino", ["hardware=a100_80gb_x1", "hardware.gpu_memory_gb=inf", *DRY],
     "hardware.gpu_memory_gb=inf"),
    ("eval limit nan", "llamantino", ["stage=eval", "eval.limit=nan", *DRY], "eval.limit=nan"),
    ("rope factor below 1", "llamantino", ["model.rope_scaling={type:linear,factor:0.5}", *DRY],
     "model.rope_scaling.factor=0.5 must be in (1, 64]"),
    # sequences within the model's context
    ("sequence over 8k context", "llamantino", ["model=llama3_8b", "stage.sequence_len=1000000", *DRY],
     "stage.sequence_len=1000000 exceeds model.context_length=8192"),
    ("sequence over 4k context", "llamantino", ["model=llama2_7b", "stage.sequence_len=8192", *DRY],
     "stage.sequence_len=8192 exceeds model.context_length=4096"),
    ("prompt over context", "llamantino", ["model=llama2_7b", "stage.max_prompt_len=5000", *DPO],
     "stage.max_prompt_len=5000 exceeds model.context_length=4096"),
    ("sequence over rope scaling", "llamantino",
     ["stage.sequence_len=8192", "model.rope_scaling={type:linear,factor:2.0}", *DRY],
     "model.context_length=2048 x model.rope_scaling.factor=2"),
    # names: no bidi controls, zero-width or other invisible characters
    ("name right-to-left override", "llamantino", ["run.name='run\u202egpj.exe'", *DRY], "U+202E"),
    ("name zero-width space", "llamantino", ["run.name='run\u200b1'", *DRY], "U+200B"),
    ("name byte order mark", "llamantino", ["run.name='\ufeffrun1'", *DRY], "U+FEFF"),
    ("name isolate", "llamantino", ["run.name='run\u2066x\u2069'", *DRY], "U+2066"),
    ("name arabic letter mark", "llamantino", ["run.name='run\u061c1'", *DRY], "U+061C"),
    ("name word joiner", "llamantino", ["run.name='run\u20601'", *DRY], "U+2060"),
    ("step name bidi", "llamantino", PIPELINE, "pipeline.steps[].name='sft\\u202e'"),
    ("plan name bidi", "plan", [*PLAN, "run.name='x\u202ey'"], "U+202E"),
    # secrets: the environment is never copied into a config
    ("name from env", "llamantino", ["run.name=${oc.env:HF_TOKEN}", *DRY], "secrets belong in the job's environment"),
    ("notes from env", "llamantino", ["run.notes=${oc.env:HF_TOKEN}", *DRY], "run.notes=${oc.env:HF_TOKEN}"),
    ("tags from env", "llamantino", ["tracking=wandb", "tracking.tags=[${oc.env:HF_TOKEN}]", *DRY],
     "tracking.tags[0]=${oc.env:HF_TOKEN}"),
    ("legacy env resolver", "llamantino", ["run.notes=${env:HOME}", *DRY], "run.notes=${env:HOME}"),
    ("env inside text", "llamantino", ["run.notes=token-${oc.env:HF_TOKEN}-end", *DRY], "secrets belong"),
    ("env nested in select", "llamantino", ["run.notes='${oc.select:run.nope,${oc.env:HF_TOKEN}}'", *DRY],
     "secrets belong"),
    ("decode evaluates text", "llamantino", ["run.notes=${oc.decode:'x'}", *DRY], "calls the resolver oc.decode"),
    ("env in passthrough", "llamantino", ["+stage.axolotl.wandb_run_id=${oc.env:HF_TOKEN}", *DRY],
     "stage.axolotl.wandb_run_id"),
    ("env in a sweep", "llamantino", ["-m", "stage.lora_r=8,16", "run.notes=${oc.env:HF_TOKEN}", *DRY],
     "secrets belong"),
    ("env in slurm env", "llamantino", ["+hardware.slurm.env.TOKEN=${oc.env:HF_TOKEN}", *DRY],
     "hardware.slurm.env.TOKEN"),
    # the planner composes the same way
    ("plan learning rate inf", "plan", [*PLAN, "stage.learning_rate=inf"], "stage.learning_rate=inf"),
    ("plan sequence over context", "plan", [*PLAN, "stage.sequence_len=100000"], "exceeds model.context_length=4096"),
    ("plan notes from env", "plan", [*PLAN, "run.notes=${oc.env:HF_TOKEN}"], "secrets belong"),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("hostile_values")
    (w / "conf" / "pipeline").mkdir(parents=True)
    (w / "conf" / "pipeline" / "bidi.yaml").write_text(
        "name: bidi\nsteps:\n  - {name: \"sft\\u202e\", input: base, overrides: [stage=sft]}\n", encoding="utf-8")
    return hostile_folder(w)


def test_the_table_is_large_enough():
    assert len(ROWS) >= 22 and len({row[0] for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("name, module, args, needle", ROWS, ids=[row[0] for row in ROWS])
def test_hostile_value_is_one_error_line_and_leaves_nothing(work, name, module, args, needle):
    assert_refused(work, module, args, needle, env={"HF_TOKEN": TOKEN})


# --- what a row cannot say ------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["run.notes=${oc.env:HF_TOKEN}", "launcher=slurm", "hardware=local_slurm", "launcher.submit=false"],
    ["-m", "stage.lora_r=8,16", "tracking=wandb", "tracking.tags=[a,${oc.env:HF_TOKEN}]", "launcher=dry"],
])
def test_a_secret_named_on_the_command_line_reaches_no_file(tmp_path, args):
    """A separate process with the token in its environment: refused, and no file anywhere holds it."""
    work = hostile_folder(tmp_path)
    proc = cli(*args, "run.output_root=runs", cwd=work, env={"HF_TOKEN": TOKEN}, subprocess=True)
    assert proc.returncode == 2 and TOKEN not in proc.stdout + proc.stderr, proc.stderr
    leaked = [p for p in work.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == [] and not (work / "runs").exists()


def test_names_are_stored_in_their_nfc_form(tmp_path, compose):
    decomposed = "caffe\u0301"
    assert compose(f"run.name='{decomposed}'").run.name == "caff\u00e9"
    run_dir = run_dir_of(ok(cli(f"run.name='{decomposed}'", "run.output_root=runs", "launcher=dry", cwd=tmp_path)))
    assert run_dir.parent.name == "caff\u00e9" and [p.name for p in (tmp_path / "runs").iterdir()] == ["caff\u00e9"]


def test_pipeline_step_names_are_stored_in_their_nfc_form():
    from llamantino.config.schema import PipelineStep

    assert PipelineStep(name="e\u0301").name == "\u00e9"


def test_rope_scaling_lets_a_longer_sequence_through_axolotls_validation(compose, tmp_path):
    cfg = compose("stage.sequence_len=4096", "model.rope_scaling={type:linear,factor:2.0}", "launcher=dry")
    run = build(cfg, tmp_path / "run")  # validated by Axolotl's own checks
    assert run.recipe["sequence_len"] == 4096
    assert run.recipe["overrides_of_model_config"] == {
        "rope_scaling": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}
    llama3 = compose("model=llama3_8b", "stage.sequence_len=16384", "model.rope_scaling={type:dynamic,factor:2}")
    assert llama3.model.max_sequence_len == 16384 and llama3.model.rope_theta == 500000.0


def test_planner_memory_grows_with_sequence_length_and_micro_batch(compose):
    from llamantino.orchestrate.costs import plan

    def memory(*overrides):
        p = plan(compose("experiment=llamantino2_7b_adapt", *overrides))
        assert p["memory_per_gpu_gb"] == pytest.approx(p["state_memory_gb"] + p["activation_gb"], abs=0.11)
        return p["activation_gb"], p["memory_per_gpu_gb"]

    short, longer = memory("stage.sequence_len=1024"), memory("stage.sequence_len=4096")
    small, large = memory("stage.micro_batch_size=1"), memory("stage.micro_batch_size=16")
    assert longer[0] > short[0] * 3.9 and longer[1] > short[1]
    assert large[0] > small[0] * 15 and large[1] > small[1]  # linear in the micro batch (rounded to 0.1 GB)
    # without recomputation every layer keeps its activations
    assert memory("stage.gradient_checkpointing=false")[0] > memory()[0] * 5


def test_the_planner_says_when_activations_do_not_fit(compose):
    from llamantino.orchestrate.costs import plan

    p = plan(compose("experiment=llamantino2_7b_adapt", "stage.micro_batch_size=64", "stage.sequence_len=4096",
                     "stage.gradient_checkpointing=false"))
    assert any("activations at sequence_len 4096, micro batch 64" in notice for notice in p["notices"])


def test_environment_values_reach_the_job_as_literal_text(compose, tmp_path):
    """Tags, notes and slurm.env values are text in the job; only a field declared a shell expression
    (here hardware.storage.hf_home) keeps its $VAR live. Proven by running the script's exports in bash."""
    overrides = ["tracking=wandb", "tracking.tags=['$HF_TOKEN','`touch pwned_tick`']", "run.notes='$(touch pwned)'",
                 "hardware=local_slurm", "launcher=slurm", "launcher.submit=false",
                 "+hardware.slurm.env.MY_VALUE='$(touch pwned_env)$HOME'", "hardware.storage.hf_home=\\${WORK}/hf_home"]
    run = build(compose(*overrides), tmp_path / "run", overrides=overrides)
    script = run.files["job.sbatch"]
    exports = "\n".join(line for line in script.splitlines() if line.startswith("export "))
    shown = subprocess.run(["bash", "-c", exports + '\nprintf "%s\\n" "$WANDB_TAGS" "$MY_VALUE" "$HF_HOME"'],
                           cwd=tmp_path, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "HF_TOKEN": TOKEN, "HOME": "/home/x", "WORK": "/work/x"})
    tags, value, hf_home = shown.stdout.splitlines()
    assert "$HF_TOKEN" in tags and "`touch pwned_tick`" in tags and "run.notes:'$(touch pwned)'" in tags
    assert TOKEN not in shown.stdout and value == "$(touch pwned_env)$HOME"
    assert hf_home == "/work/x/hf_home"  # the declared shell expression
    assert not list(tmp_path.glob("pwned*"))
    assert re.search(r"^export WANDB_TAGS='", script, re.M)


def test_only_declared_fields_are_rendered_as_shell_expressions(compose):
    from llamantino.render.sbatch import Shell, shell_field

    cfg = compose("hardware.storage.hf_home=\\${WORK}/hf")
    assert shell_field(cfg.hardware.storage, "hf_home") == Shell('"${WORK}"/hf')
    with pytest.raises(TypeError, match="not declared a shell expression"):
        shell_field(cfg.run, "notes")
