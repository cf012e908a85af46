"""The typed records of a run's job (job.json), a sweep (sweep.json), a pipeline (pipeline.json), a
submission's job graph (graph.json) and an evaluation (eval.json, results.json): read back through
:func:`llamantino.records.files.load_record`, every field's type checked, never read by string key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional


@dataclass(frozen=True)
class Submission:
    job_id: str
    submitted: str
    array: Optional[str] = None  # a task of a job array: the array's id
    dependency: Optional[str] = None  # afterok:... when it waited on other jobs


@dataclass(frozen=True)
class Submissions:
    """job.json: every submission of a run (a failed run can be submitted again), the last one's id."""

    job_id: Optional[str] = None
    submissions: list[Submission] = field(default_factory=list)


@dataclass(frozen=True)
class SweepPoint:
    index: int
    run_dir: str  # the point's folder, inside the sweep directory
    overrides: list[str]


@dataclass(frozen=True)
class SweepRecord:
    """sweep.json: the points of a -m sweep and, once submitted, its job array."""

    launcher: str
    points: list[SweepPoint]
    job_id: Optional[str] = None


@dataclass(frozen=True)
class PipelineStepRecord:
    name: str  # the step's folder, inside the pipeline directory
    run_dir: str
    stage: str
    action: str  # run, skip, wait or resume, as planned when the pipeline was last launched


@dataclass(frozen=True)
class PipelineManifest:
    """pipeline.json: the steps of a pipeline, in order."""

    pipeline: str
    launcher: str
    steps: list[PipelineStepRecord]
    description: Optional[str] = None


@dataclass(frozen=True)
class GraphEntry:
    """A folder of the shared cache that jobs of a graph make: a prepared corpus or a download."""

    id: str  # "<root>/<key>" under hardware.storage.cache: prepared/<key> or downloads/<key>
    config: str  # the run whose config.yaml renders its scripts ("." : the graph's own directory)
    request: dict[str, Any]  # what to make: the entry's request.json
    tasks: int = 1  # tasks of its array steps


@dataclass(frozen=True)
class GraphNode:
    """One job of a graph: a run's, a sweep's job array, or one step making a shared entry."""

    name: str  # unique in the graph
    after: list[str] = field(default_factory=list)  # the nodes it waits on (afterok), all earlier in the graph
    run: Optional[str] = None  # a run's job: the run's folder ("." : the graph's own directory)
    array: bool = False  # the job array over every point of the sweep the graph belongs to
    entry: Optional[str] = None  # a step making one of the graph's entries: the entry's id
    step: Optional[str] = None  # ... and which step (its key in the entry's jobs.json)


@dataclass(frozen=True)
class JobGraph:
    """graph.json: every job one submission makes, in submission order, each with the jobs it waits on.

    launcher=slurm writes it into the run, pipeline or sweep directory and submits it;
    ``launcher.submit=false`` writes it only, and ``python -m llamantino launch <dir>`` submits it."""

    FILE: ClassVar[str] = "graph.json"
    nodes: list[GraphNode]
    entries: list[GraphEntry] = field(default_factory=list)


@dataclass(frozen=True)
class EvalGroup:
    num_fewshot: int
    tasks: list[str]


@dataclass(frozen=True)
class EvalPlan:
    """eval.json: what an eval job runs (llamantino/stages/eval.py writes it)."""

    eval: str
    model: dict[str, Any]  # the evaluated model's source (provenance's ModelSource, as plain data)
    model_args: str
    device: str
    processes: int
    gpus: int
    batch_size: str
    limit: Optional[float]
    include_path: Optional[str]
    harness: dict[str, Any]
    groups: list[EvalGroup]
    metrics: dict[str, str]  # task -> the metric its score is
    leaderboard: bool
    target: Optional[dict[str, Any]]
    evaluated_run: Optional[str]
    log_samples: bool = False  # lm-eval --log_samples (absent from eval.json files written before it)


@dataclass(frozen=True)
class ReleasePush:
    """Where a release may be pushed (release.repo_id/private/revision); the token is never recorded."""

    repo_id: Optional[str] = None
    private: bool = False
    revision: Optional[str] = None


@dataclass(frozen=True)
class ReleasePlan:
    """release.json: what a release job writes (llamantino/stages/release.py writes it).

    Run directories are absolute paths on the machine that made them; the released folder never
    names them (the job reads their records and writes ids, names and numbers only)."""

    name: str  # the model's name in the card (the release run's run.name)
    what: str  # model (merged, sharded safetensors) or adapter
    model_run: str  # the run whose output is released (a trained adapter or model, or a merge)
    output_kind: str  # that output's kind: adapter or model
    eval_runs: list[str]  # eval runs of that model: their scores make the card's model-index
    lineage: list[str]  # every run that made the model, from the first one on the base model to model_run
    max_shard_size: str
    template: Optional[str]  # the prompt template the model answers in (None: raw text)
    system_prompt: Optional[str]  # None: the template's default
    push: ReleasePush


@dataclass(frozen=True)
class EvalResults:
    """results.json: an eval run's scores, and what they depend on."""

    eval: str
    scores: dict[str, float]
    model: dict[str, Any]
    harness: Optional[dict[str, Any]] = None
    average: Optional[float] = None
    # Per task, where lm-eval reports it (absent from results.json files written before them):
    stderr: Optional[dict[str, float]] = None  # the score's standard error
    num_fewshot: Optional[dict[str, int]] = None  # examples in each prompt (the eval group's few-shot count)
    datasets: Optional[dict[str, str]] = None  # the hub dataset the task reads (none for local data files)
    dataset_configs: Optional[dict[str, str]] = None  # that dataset's configuration (its subset)

    @property
    def mode(self) -> str:
        """The evaluation mode (eval.mode) the scores came from."""
        return str((self.harness or {}).get("mode", "unrecorded"))


@dataclass(frozen=True)
class StudyDimension:
    """One searched key: a float or int interval (``log``: sampled on a log scale; ``step``: on a
    grid) or a categorical choice among override values."""

    key: str  # a dotted config key (stage.learning_rate)
    kind: str  # float, int or categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: list[str] = field(default_factory=list)  # categorical: each choice as its override writes it
    text: str = ""  # the dimension as the command line wrote it


@dataclass(frozen=True)
class StudyBatch:
    """One batch of a study: trials asked together, run as one sweep (one SLURM job array)."""

    name: str  # its folder inside the study directory: a sweep directory
    trials: list[int]  # Optuna trial numbers, in the order of the sweep's points
    step_job: Optional[str] = None  # SLURM: the tell-and-ask job waiting (afterany) on the batch's array


@dataclass(frozen=True)
class StudyRecord:
    """study.json: what a study searches, how, and its batches so far."""

    name: str  # the Optuna study's name in the journal
    launcher: str
    overrides: list[str]  # the overrides every trial shares
    space: list[StudyDimension]
    objective: str  # a metric the trainer logs (eval_loss, loss, ...), its final value
    direction: str  # minimize or maximize
    trials: int  # the budget: trials run in all
    batch: int  # trials asked and run together
    sampler: str
    seed: int
    pruner: str  # none or median (in the job, from the intermediate values of the objective)
    batches: list[StudyBatch] = field(default_factory=list)
