"""Typed configuration: the single source of truth for defaults (the schemas).

A pipeline config (``workflow/config/config.yaml``) has a shared part (pipeline,
tracking, launcher, data), the recipe's stage configs under ``stages``, and
``variants``: named ablation arms whose overrides are deep-merged onto ``stages``.
Every model here is pydantic with unknown keys forbidden; :mod:`slingshot.validate`
loads a config file and reports every problem with the key's full path and, where the
key came from a YAML file, the file and line. This module imports neither torch nor
the plan or the launcher.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    field_validator,
    model_validator,
)

from slingshot.data.config import DataConfig, ThoughtTemplate
from slingshot.models.config import GPTModelConfig, ParallelConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

# The stage chain, defined here only: the model stages in recipe order, each starting from the
# previous one's model. Synthesis (a dataset, not a model) runs just before sft; evaluation
# and the report follow. The plan, the rules, `evaluate.models` and the report read these.
ModelStage = Literal["pretrain", "rlp", "sft", "prorl"]
MODEL_CHAIN: tuple[ModelStage, ...] = get_args(ModelStage)
# The model stages whose config has ``phases``: each phase is its own node (and job).
PHASED_STAGES: tuple[ModelStage, ...] = ("pretrain", "prorl")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- shared
class PipelineMeta(StrictModel):
    name: Name = "slingshot-tiny"
    seed: int = 1234
    results_dir: str = "results"
    work_dir: str = "work"


class TrackingConfig(StrictModel):
    # None: sqlite:///<results_dir>/mlflow.db (embedded default). On a cluster: the
    # URL of the tracking server from cluster/mlflow (SQLite on a shared filesystem locks).
    uri: str | None = None
    experiment: str | None = None  # None: the pipeline name
    log_models: bool = True
    # A server with authentication (cluster/mlflow/serve.sh): the file of mode 600 holding
    # MLFLOW_TRACKING_USERNAME=... and MLFLOW_TRACKING_PASSWORD=... lines. The launcher puts
    # them into the jobs' environment (never into params, tags, job scripts or manifests);
    # variables already set in the environment win.
    credentials_file: str | None = None

    @field_validator("uri", "credentials_file")
    @classmethod
    def _expand(cls, value: str | None) -> str | None:
        # ${VAR}: a recipe names the site's server without naming its login node.
        return expand_path(value) if value is not None else None


class Resources(StrictModel):
    nodes: PositiveInt = 1
    gpus_per_node: NonNegativeInt = 0
    tasks_per_node: PositiveInt | None = None  # None: one task per GPU (at least one)
    cpus_per_task: PositiveInt = 1
    mem_gb: PositiveFloat | None = None
    time_min: PositiveInt = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra_sbatch: dict[str, str] = Field(default_factory=dict)
    setup: list[str] = Field(default_factory=list)  # shell lines run before the job (module load ...)

    @property
    def effective_tasks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


class LauncherConfig(StrictModel):
    # local: a process on this machine (embedded default); slurm: sbatch via submitit;
    # inprocess: submitit's debug executor, in the launcher's own process (tests).
    backend: Literal["local", "slurm", "inprocess"] = "local"
    site: str | None = None  # cluster/<site>.yaml with partitions, accounts, GPUs per node
    max_requeues: NonNegativeInt = 3  # requeues after USR2 (time limit, preemption) per stage
    max_resubmits: NonNegativeInt = 2  # fresh submissions after a cancel or node failure
    poll_interval_s: PositiveFloat = 2.0
    signal_delay_s: PositiveInt = 120  # Slurm sends USR2 this long before the time limit
    # Resources of the jobs that have no stage section (data, report).
    default_resources: Resources = Field(default_factory=lambda: Resources(time_min=60))


class CheckpointConfig(StrictModel):
    interval_steps: PositiveInt = 50
    # Save when this many minutes of the job have passed; None: the stage's time limit
    # minus a safety margin, so a checkpoint exists before Slurm ends the job.
    time_budget_min: PositiveFloat | None = None
    keep: PositiveInt = 2


class OptimizerConfig(StrictModel):
    lr: PositiveFloat = 3e-4
    min_lr_ratio: Fraction = 0.1  # cosine decays to this fraction of the peak
    warmup_steps: NonNegativeInt = 10
    schedule: Literal["cosine", "constant"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    grad_clip: Annotated[float, Field(ge=0)] = 1.0


# --------------------------------------------------------------------------- stages
class StageConfig(StrictModel):
    enabled: bool = True
    resources: Resources = Field(default_factory=Resources)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    log_every: PositiveInt = 10


class ModelStageConfig(StageConfig):
    # A local HF model directory to start from. None: the previous stage's output.
    # Setting it makes this stage the start of the chain (no upstream stage).
    init_model: str | None = None
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)

    @field_validator("init_model")
    @classmethod
    def _expand(cls, value: str | None) -> str | None:
        return expand_path(value) if value is not None else None

    @field_validator("optimizer", mode="before")
    @classmethod
    def _partial_optimizer(cls, value: Any) -> Any:
        # A partial `optimizer:` section (e.g. only lr) keeps THIS stage's defaults for the
        # keys it omits (RL stages: constant lr, no decay), not OptimizerConfig's pretraining ones.
        if isinstance(value, dict):
            default = cls.model_fields["optimizer"].default_factory()  # type: ignore[misc]
            return {**default.model_dump(), **value}
        return value


class PretrainPhase(StrictModel):
    name: Name
    token_fraction: Annotated[float, Field(gt=0.0, le=1.0)]  # of the stage's total tokens
    blend: dict[str, Annotated[float, Field(gt=0)]]  # corpus name (from data) -> weight


def _tiny_gpt() -> GPTModelConfig:
    return GPTModelConfig(
        num_layers=4,
        hidden_size=128,
        ffn_hidden_size=352,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=2048,
        seq_length=256,
    )


class PretrainConfig(ModelStageConfig):
    # vocab_size is replaced by the tokenizer's actual size at run time.
    # With init_model (continued pretraining) the HF config decides the architecture and
    # vocabulary; only seq_length and make_vocab_size_divisible_by are read from `model`.
    model: GPTModelConfig = Field(default_factory=_tiny_gpt)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    total_tokens: PositiveInt = 2_000_000
    micro_batch_size: PositiveInt = 8
    global_batch_size: PositiveInt = 16
    precision: Literal["fp32", "bf16"] = "fp32"
    # FLR: reasoning data enters for the last 40% of tokens in the paper.
    phases: list[PretrainPhase] = Field(
        default_factory=lambda: [
            PretrainPhase(name="phase1", token_fraction=0.6, blend={"general": 1.0}),
            PretrainPhase(name="phase2", token_fraction=0.4, blend={"general": 0.8, "reasoning": 0.2}),
        ],
        min_length=1,
    )

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        total = sum(p.token_fraction for p in self.phases)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"phases: token_fraction values must sum to 1 (got {total:g})")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phases: names must be unique (got {names})")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError("global_batch_size must be a multiple of micro_batch_size")
        return self


class MemoryConfig(StrictModel):
    """What bounds a training stage's GPU memory (SFT, RLP, ProRL); ``slingshot plan --memory``
    adds up what these settings leave (slingshot.memory_plan)."""

    # RLP and ProRL: every log-prob, scoring and entropy forward (training forwards included)
    # covers at most this many tokens (rows x padded width, at least one row), so peak
    # memory follows this, not the batch. The default holds the tiny recipe's batches whole.
    logprob_tokens_per_micro_batch: PositiveInt = 16384
    # RLP and ProRL: the output layer runs over this many tokens at a time, each chunk
    # recomputed in the backward pass, so no more logits than that are ever alive (one
    # 16k-token row of a 150k vocabulary is 10 GB of fp32 logits). None: the whole micro-batch.
    logits_chunk_tokens: PositiveInt | None = None
    bf16: bool = True  # bf16 autocast over fp32 master weights on GPUs; CPU always runs fp32
    activation_checkpointing: bool = False  # recompute each decoder layer in the backward pass
    # The frozen copy (ProRL's reference, RLP's EMA teacher): device = fp32 next to the policy;
    # bf16 = on the GPU in bf16 (reference only: EMA steps of (1-tau) vanish in bf16);
    # cpu = fp32 in host memory, brought to the GPU for its passes only.
    frozen_copy: Literal["device", "bf16", "cpu"] = "device"


class RolloutConfig(StrictModel):
    backend: Literal["hf", "vllm"] = "hf"
    gpu_memory_utilization: Fraction = 0.5  # vLLM colocated with the trainer
    # vLLM only. A weight push that takes longer fails the job, naming the stage and step.
    sync_timeout_s: PositiveFloat = 600.0
    cpu_kvcache_gb: PositiveInt = 1  # KV cache on CPU (VLLM_CPU_KVCACHE_SPACE)
    enforce_eager: bool = True  # False: CUDA graphs (GPU; faster, slower to start)
    max_model_len: PositiveInt | None = None  # None: the model's max_position_embeddings
    sleep_during_update: bool = True  # GPU: free the KV cache while the trainer updates
    # The engine's weights; auto: bfloat16 on a GPU (the trainer's fp32 master weights are cast
    # at every push), the model's own dtype on CPU.
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # ProRL only. 1: one-step-async; the engine runs in its own process and generates step t+1's
    # rollouts while the trainer updates on step t's (one weight version behind); the loss's
    # importance ratio is against the log-probs the engine sampled with.
    async_steps: Annotated[int, Field(ge=0, le=1)] = 0

    @model_validator(mode="after")
    def _check_async(self) -> RolloutConfig:
        if self.async_steps and self.backend != "vllm":
            raise ValueError(
                "async_steps: one-step-async rollouts need backend: vllm (its engine runs in a "
                "process of its own and returns the behaviour log-probs)"
            )
        return self


SYNC_ONLY = "rollout.async_steps: only prorl generates one step ahead; {why} (set it to 0)"


class RLPConfig(ModelStageConfig):
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(
            lr=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.0
        )
    )
    # rlp: thoughts rewarded by information gain. next_token: the RLP paper's control, plain
    # next-token training on the same positions (each one's context and targets), steps,
    # mini-batches, optimizer and schedule, with no thought, no EMA teacher and no rollouts.
    objective: Literal["rlp", "next_token"] = "rlp"
    corpus: str = "general"  # data corpus the positions are drawn from
    steps: PositiveInt = 100
    positions_per_step: PositiveInt = 8  # B
    group_size: Annotated[int, Field(ge=2)] = 16  # G
    thought_tokens: PositiveInt = 2048
    context_tokens: PositiveInt = 2048
    target_tokens: PositiveInt = 1  # k next tokens predicted after the thought
    temperature: PositiveFloat = 0.7
    eps_low: Fraction = 0.2
    eps_high: Fraction = 0.2
    ema_tau: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.999
    position_selection: Literal["uniform", "entropy"] = "uniform"
    entropy_threshold: Annotated[float, Field(ge=0)] = 1.0
    # The filter's entropy is of the proxy's top-k next-token distribution (the Reinforcement
    # Pre-Training paper's top-16), at most log k; a k of the vocabulary size gives the full one.
    entropy_top_k: PositiveInt = 16
    proxy_model: str | None = None  # for entropy selection; None: the input model
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0  # thought sampling
    min_context_tokens: PositiveInt = 16  # a position needs at least this much context
    # The thought is written as the model has seen thoughts: prompt ``context + open``, stop on
    # ``close`` (one token), end of text (EOS / end of turn) or a nested ``open``; the sequence
    # scored is ``context open c close after target`` (``after``: e.g. Qwen3's "\n\n").
    thought_template: ThoughtTemplate = Field(default_factory=ThoughtTemplate)
    # A thought that did not close (length cap, end of text, nested open): ``exclude`` it from
    # its group's baseline/advantage and from the loss (counted, logged); ``close`` it by
    # appending ``close`` (not an action) and score it like a closed one; ``zero_reward``:
    # keep it in the group with reward 0 (no information gain).
    unclosed_thought: Literal["exclude", "close", "zero_reward"] = "exclude"
    # Positions whose target lies in these spans are never drawn: an existing think block (and
    # the token right after it),
    # a \boxed{...} answer, the user turn (user header up to the assistant header) of a chat
    # document. [] draws anywhere.
    exclude_spans: list[Literal["think", "boxed", "user"]] = Field(
        default_factory=lambda: ["think", "boxed", "user"]
    )
    positions_per_document: PositiveInt = 1  # distinct positions drawn from one document
    # Policy updates per step: ppo_epochs passes over the B·G thoughts, each split into
    # mini_batches optimizer steps (groups kept whole); 1 x 1 is on-policy (ratio = 1).
    ppo_epochs: PositiveInt = 1
    mini_batches: PositiveInt = 1
    micro_batch_size: PositiveInt = 8  # sequences per forward pass (scoring and update)
    # auto: FSDP2 on GPUs (the policy and its frozen copy sharded), gradient all-reduce across
    # CPU (gloo) processes; fsdp shards on gloo too; allreduce replicates on GPUs.
    data_parallel: Literal["auto", "fsdp", "allreduce"] = "auto"
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    @model_validator(mode="after")
    def _check_rlp(self) -> RLPConfig:
        if self.positions_per_step % self.mini_batches:
            raise ValueError(
                f"positions_per_step ({self.positions_per_step}) must be a multiple of "
                f"mini_batches ({self.mini_batches})"
            )
        if self.rollout.async_steps:
            raise ValueError(
                SYNC_ONLY.format(why="RLP samples each step's thoughts from the current weights")
            )
        if self.proxy_model is not None:
            self.proxy_model = expand_path(self.proxy_model)
        if self.memory.frozen_copy == "bf16":
            raise ValueError(
                "memory.frozen_copy: bf16 would freeze the EMA teacher (a step of (1 - ema_tau) of the "
                "difference is below bf16's resolution); use cpu to save its GPU memory"
            )
        return self


class GeneratorConfig(StrictModel):
    backend: Literal["teacher", "hf", "vllm"] = "teacher"
    model: str | None = None  # local HF directory for hf / vllm
    # teacher: probability that a sampled solution is wrong (what the majority vote filters),
    # and how far new problems' difficulty knobs move from their few-shot example (± fraction).
    error_rate: Fraction = 0.1
    spread: Fraction = 0.5
    # hf / vllm: generation lengths.
    max_problem_tokens: PositiveInt = 128
    max_solution_tokens: PositiveInt = 512

    @model_validator(mode="after")
    def _needs_model(self) -> GeneratorConfig:
        if self.backend != "teacher" and not self.model:
            raise ValueError(f"model: a local model directory is required for backend '{self.backend}'")
        if self.model is not None:
            self.model = expand_path(self.model)
        return self


class ArrayTaskConfig(StrictModel):
    """What ONE task of a job array a stage fans out (synthesis feature shards) requests: its
    share of the stage's node, not the stage's whole allocation (the parent job keeps that)."""

    # None: one GPU when the stage's nodes have GPUs, else none.
    gpus: NonNegativeInt | None = None
    # None: the node's CPUs / memory in proportion to the task's GPUs (without GPUs: one
    # stage task's CPUs and 1/tasks_per_node of the memory).
    cpus_per_task: PositiveInt | None = None
    mem_gb: PositiveFloat | None = None
    time_min: PositiveInt | None = None  # None: the stage's time limit


class SynthConfig(StageConfig):
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    # Proxy model for gradient features; None: the variant's model entering synthesis.
    proxy_model: str | None = None
    target_size: PositiveInt = 2000
    seed_pool_size: PositiveInt = 200
    feature_dim: PositiveInt = 1024
    projection_block_size: PositiveInt = 65536
    cluster_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1
    kmeans_iters: PositiveInt = 20
    few_shot: PositiveInt = 5
    problems_per_request: PositiveInt = 2
    requests_per_round: PositiveInt = 64
    solutions_per_problem: PositiveInt = 3
    problem_temperature: PositiveFloat = 1.0
    solution_temperature: PositiveFloat = 0.75
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    keep_cluster_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    max_rounds: PositiveInt = 50
    # 1: features are computed by this job's ranks (one shard each, on its device); more: as
    # many Slurm array tasks, fanned out from a one-task job, each requesting array_task.
    feature_shards: PositiveInt = 1
    array_task: ArrayTaskConfig = Field(default_factory=ArrayTaskConfig)
    # Per-sample gradients: torch.func vmap over feature_batch_size samples, or one backward
    # per sample; gradients of as many samples as fit feature_memory_mb are projected together.
    feature_method: Literal["vmap", "loop"] = "vmap"
    feature_batch_size: PositiveInt = 8
    feature_memory_mb: PositiveFloat = 512.0
    feature_max_tokens: PositiveInt = 1024  # prompt + completion tokens per sample
    # Few-shot examples are drawn with weight difficulty_floor + difficulty, where
    # difficulty = 1 - (agreeing solutions / solutions_per_problem): easy ones still appear.
    difficulty_floor: PositiveFloat = 0.1

    @model_validator(mode="after")
    def _check_fan_out(self) -> SynthConfig:
        res, task = self.resources, self.array_task
        tasks = res.nodes * res.effective_tasks_per_node
        if self.feature_shards > 1 and tasks > 1:
            raise ValueError(
                f"feature_shards: {self.feature_shards} array tasks fan out from a one-task job, but "
                f"resources ask for {tasks} tasks, whose ranks compute the features themselves "
                "(set feature_shards: 1, or resources to one task)"
            )
        if task.gpus is not None and task.gpus > res.gpus_per_node:
            raise ValueError(
                f"array_task.gpus: {task.gpus} GPUs per array task, but the stage's nodes have "
                f"{res.gpus_per_node} (resources.gpus_per_node)"
            )
        node_cpus = res.cpus_per_task * res.effective_tasks_per_node
        if task.cpus_per_task is not None and task.cpus_per_task > node_cpus:
            raise ValueError(
                f"array_task.cpus_per_task: {task.cpus_per_task} CPUs per array task, more than the "
                f"stage's node has ({node_cpus} = resources.cpus_per_task x tasks per node)"
            )
        if task.mem_gb is not None and res.mem_gb is not None and task.mem_gb > res.mem_gb:
            raise ValueError(
                f"array_task.mem_gb: {task.mem_gb:g} GB per array task, more than the stage's node has "
                f"({res.mem_gb:g} GB, resources.mem_gb)"
            )
        return self


class SFTDataset(StrictModel):
    path: str
    format: Literal["jsonl", "parquet", "hf"] = "jsonl"
    prompt_field: str = "prompt"
    response_field: str = "response"
    weight: Annotated[float, Field(gt=0)] = 1.0


def sft_grad_accum(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per rank per SFT optimizer step; a clear error, by key, if uneven."""
    per_pass = micro_batch_size * world_size
    if global_batch_size % per_pass:
        raise ValueError(
            f"stages.sft.global_batch_size ({global_batch_size}) must be a multiple of "
            f"stages.sft.micro_batch_size x ranks ({micro_batch_size} x {world_size} = {per_pass})"
        )
    return global_batch_size // per_pass


class SFTConfig(ModelStageConfig):
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=1e-4, weight_decay=0.0))
    use_synth: bool = True  # train on the synthesis stage's dataset
    # The variant whose synthesized set this SFT trains on (None: its own). A pretraining
    # ablation gives every arm one SFT set this way, so the SFT data is not a second variable;
    # the variant must be listed before this one and run synthesis.
    synth_from: Name | None = None
    # Which synthesis output to train on: the Prismatic selection, or the control set (the seeds
    # plus a random subset of all quality-passed candidates, as many as were selected).
    synth_dataset: Literal["selected", "random_subset"] = "selected"
    extra_datasets: list[SFTDataset] = Field(default_factory=list)
    epochs: PositiveFloat = 2.0
    seq_length: PositiveInt = 2048
    micro_batch_size: PositiveInt = 4
    # Rows (packed sequences) per optimizer step, whatever the world size: gradient
    # accumulation is derived (global_batch_size / (micro_batch_size x ranks)), so a resume
    # on another number of GPUs keeps the data schedule. It must divide evenly (run time).
    global_batch_size: PositiveInt = 16
    packing: bool = True
    eval_every: PositiveInt = 50
    # Held-out loss: this share of the distinct prompts (chosen by content hash, so the
    # split does not depend on data order), at most eval_max_examples examples.
    eval_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.05
    eval_max_examples: NonNegativeInt = 256
    # auto: FSDP2 on GPUs, gradient all-reduce across CPU (gloo) processes.
    data_parallel: Literal["auto", "fsdp", "allreduce"] = "auto"
    # None: the model's own (sdpa for most). flash_attention_2 packs by position ids
    # without a dense [T, T] mask per row: the choice for long sequences on GPUs.
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3"] | None = None
    memory: MemoryConfig = Field(default_factory=MemoryConfig)  # SFT: bf16 and activation_checkpointing

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "grad_accum" in data:
            raise ValueError(
                "grad_accum is no longer a key: set global_batch_size (rows per optimizer step = "
                "micro_batch_size x grad_accum x ranks); accumulation is derived from it"
            )
        return data

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"micro_batch_size ({self.micro_batch_size})"
            )
        return self


class EntropyControl(StrictModel):
    """ProRL's ε_high controller: raise ε_high while the signal is below the band, lower it above."""

    enabled: bool = True
    # entropy: mean policy token entropy of the step's update (nats); distinct_answers: mean
    # distinct final answers per group of the step's rollouts (answer diversity, which can
    # collapse while token entropy stays put).
    signal: Literal["entropy", "distinct_answers"] = "entropy"
    # True: target_low/target_high are fractions of the signal's first value (step 1).
    relative: bool = False
    target_low: Annotated[float, Field(ge=0)] = 0.3
    target_high: Annotated[float, Field(ge=0)] = 1.5
    eps_high_min: Fraction = 0.2
    eps_high_max: Fraction = 0.5
    step_size: Annotated[float, Field(gt=0)] = 0.01


class ReferenceReset(StrictModel):
    every_steps: PositiveInt | None = None
    plateau_evals: PositiveInt | None = None  # reset when validation has not improved for M evals
    reset_optimizer: bool = False  # ProRL v1: True; v2: False


class ProRLPhase(StrictModel):
    name: Name
    steps: PositiveInt
    max_response_tokens: PositiveInt


class PromptSet(StrictModel):
    """A user RL prompt set: local JSONL/Parquet/HF-on-disk rows with a prompt and an answer.

    verifier: ``math`` (math-verify on the last ``\\boxed{}``, else the last number),
    ``exact`` (the extracted answer equals the gold string, whitespace-trimmed),
    ``reasoning_gym:<family or dataset>`` (that reasoning-gym scorer), or a user function
    ``module:function(prompt, response, answer) -> float``. ``prorl.binary_reward`` maps
    every verifier's value to 0/1 (1 only for a full score), a user function's included.
    """

    name: Name
    path: str
    format: Literal["auto", "jsonl", "parquet", "hf_disk"] = "auto"
    split: str | None = None  # for an HF DatasetDict saved to disk
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    verifier: Annotated[
        str, Field(pattern=r"^(math|exact|reasoning_gym:[\w.-]+|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
    ] = "math"
    weight: Annotated[float, Field(gt=0)] = 1.0

    @field_validator("path")
    @classmethod
    def _expand(cls, value: str) -> str:
        return expand_path(value)


_PRORL_OPTIMIZER: dict[str, Any] = dict(lr=2e-6, schedule="constant", warmup_steps=0, weight_decay=0.0)


class BehaviourIS(StrictModel):
    """Importance weights of θ_old over the behaviour policy (the engine that sampled the
    tokens, a weight version behind with ``rollout.async_steps: 1``): ProRL v2's [0.5, 5]."""

    enabled: bool = False
    low: Annotated[float, Field(ge=0, le=1)] = 0.5
    high: Annotated[float, Field(ge=1)] = 5.0
    # mask: weight 0 outside [low, high] (ICE-POP); truncate: min(ρ, high) (TIS).
    mode: Literal["mask", "truncate"] = "mask"


class ProRLConfig(ModelStageConfig):
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(**_PRORL_OPTIMIZER))
    tasks: list[str] | None = None  # task families to train on; None: all of data.tasks
    n_samples: Annotated[int, Field(ge=2)] = 16
    temperature: PositiveFloat = 1.2
    batch_prompts: PositiveInt = 256
    mini_batch_prompts: PositiveInt = 64
    eps_low: Fraction = 0.2
    eps_high: Fraction = 0.4
    kl_coef: Annotated[float, Field(ge=0)] = 1e-4
    kl_kind: Literal["k1", "k2", "k3"] = "k2"
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    normalize_std: bool = True
    adv_eps: PositiveFloat = 1e-6  # added to the group std (the batch std for reinforce_pp_baseline)
    # grpo: per-group normalisation (normalize_std); reinforce_pp_baseline: ProRL v2's group
    # mean baseline, then normalised over the whole batch.
    advantage_estimator: Literal["grpo", "reinforce_pp_baseline"] = "grpo"
    behaviour_is: BehaviourIS = Field(default_factory=BehaviourIS)
    max_gen_batches: PositiveInt = 10
    # Prompts per generation batch: ceil(over_provision x batch_prompts), so that after dynamic
    # sampling drops the all-equal groups a batch is more often full in one go (DAPO: 1.5).
    over_provision: Annotated[float, Field(ge=1)] = 1.0
    # A step with no group left after dynamic sampling trains nothing: after this many in a
    # row a loud warning names the cause and the fixes; with no_signal_max_steps that many in
    # a row fail the stage (None: never).
    no_signal_warn_steps: PositiveInt = 3
    no_signal_max_steps: PositiveInt | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    # Rewards: True maps reasoning-gym partial credit to 0/1 (pass/fail), False keeps it.
    binary_reward: bool = True
    top_entropy_q: Annotated[float, Field(gt=0, le=1)] = 1.0
    overlong_penalty_tokens: NonNegativeInt = 0  # L: penalty ramps 0 -> -1 over the last L tokens
    entropy_control: EntropyControl = Field(default_factory=EntropyControl)
    reference_reset: ReferenceReset = Field(default_factory=ReferenceReset)
    val_every: PositiveInt = 10
    val_prompts: PositiveInt = 64
    val_samples: PositiveInt = 4  # samples per validation prompt (pass@1 = mean correctness)
    val_temperature: Annotated[float, Field(ge=0)] = 0.6
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    # User prompt sets (validated and converted by the data stage), drawn beside the
    # reasoning-gym training tasks by weight; task_weight 0 trains on the user sets only.
    datasets: list[PromptSet] = Field(default_factory=list)
    task_weight: Annotated[float, Field(ge=0)] = 1.0
    # auto: FSDP2 on GPUs (the policy and its frozen copy sharded), gradient all-reduce across
    # CPU (gloo) processes; fsdp shards on gloo too; allreduce replicates on GPUs.
    data_parallel: Literal["auto", "fsdp", "allreduce"] = "auto"
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    # The length schedule: each phase is its own job in the DAG, starting from the previous.
    phases: list[ProRLPhase] = Field(
        default_factory=lambda: [ProRLPhase(name="len8k", steps=100, max_response_tokens=8192)], min_length=1
    )

    @model_validator(mode="after")
    def _check(self) -> ProRLConfig:
        if self.batch_prompts % self.mini_batch_prompts:
            raise ValueError("batch_prompts must be a multiple of mini_batch_prompts")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phases: names must be unique (got {names})")
        set_names = [d.name for d in self.datasets]
        if len(set(set_names)) != len(set_names):
            raise ValueError(f"datasets: names must be unique (got {set_names})")
        if "tasks" in set_names:
            raise ValueError("datasets: 'tasks' names the reasoning-gym tasks in the mix; rename the set")
        if self.behaviour_is.enabled and not self.rollout.async_steps:
            raise ValueError(
                "behaviour_is.enabled needs rollout.async_steps: 1 (only then do the tokens come "
                "from a behaviour policy other than θ_old, with the engine's log-probs)"
            )
        if self.task_weight == 0 and not self.datasets:
            raise ValueError("task_weight is 0 and there are no datasets: nothing to train on")
        shortest = min(p.max_response_tokens for p in self.phases)
        if self.overlong_penalty_tokens > shortest:
            raise ValueError(
                f"overlong_penalty_tokens ({self.overlong_penalty_tokens}) exceeds the shortest "
                f"phase's max_response_tokens ({shortest})"
            )
        return self


BenchmarkFormat = Literal["gsm8k", "math", "aime", "multiple_choice", "local"]
# The prompt/answer columns each built-in reader expects when the config names none.
BENCHMARK_KEYS: dict[str, tuple[str, str]] = {
    "gsm8k": ("question", "answer"),  # the answer is the text after "####"
    "math": ("problem", "answer"),  # MATH-500 has "answer"; MATH: the \boxed{} of solution_key
    "aime": ("problem", "answer"),  # an integer
    "multiple_choice": ("question", "answer"),  # a letter or a 0-based index into choices_key
}


class BenchmarkConfig(StrictModel):
    """A standard benchmark (or any local prompt/answer file) the evaluation stage runs."""

    name: Name
    format: BenchmarkFormat
    path: str  # a JSONL/Parquet file or an HF save_to_disk directory
    file_format: Literal["auto", "jsonl", "parquet", "hf_disk"] = "auto"
    split: str | None = None  # for an HF DatasetDict saved to disk
    prompt_key: str | None = None  # None: the format's own (BENCHMARK_KEYS); required for local
    answer_key: str | None = None
    solution_key: str = "solution"  # math: where the \boxed{} answer is when a row has no answer_key
    choices_key: str = "choices"  # multiple_choice: a list of options, or {label: [...], text: [...]}
    instruction: str = ""  # appended to every prompt after a blank line (e.g. where to put the answer)
    limit: PositiveInt | None = None  # a seeded draw of this many prompts; None: every row

    @field_validator("path")
    @classmethod
    def _expand(cls, value: str) -> str:
        return expand_path(value)

    @model_validator(mode="after")
    def _keys(self) -> BenchmarkConfig:
        if self.format == "local" and (self.prompt_key is None or self.answer_key is None):
            raise ValueError("a local benchmark needs prompt_key and answer_key")
        return self

    @property
    def keys(self) -> tuple[str, str]:
        """(prompt key, answer key): the configured ones, else the format's defaults."""
        default_prompt, default_answer = BENCHMARK_KEYS.get(self.format, ("prompt", "answer"))
        return self.prompt_key or default_prompt, self.answer_key or default_answer


class EvaluateConfig(StageConfig):
    # Which stages' final models are evaluated (per variant).
    models: list[ModelStage] = Field(default_factory=lambda: list(MODEL_CHAIN))
    n_samples: PositiveInt = 8
    k: list[PositiveInt] = Field(default_factory=lambda: [1, 4, 8])
    temperature: Annotated[float, Field(ge=0)] = 0.7
    max_new_tokens: PositiveInt = 1024
    prompts_per_task: PositiveInt = 64
    # Prompts of one family per generate call: the unit ranks share and sampling seeds derive
    # from (family, batch index), so results depend on it but never on the number of ranks.
    prompts_per_batch: PositiveInt = 8
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    # Standard benchmarks beside the held-out task families (each a row of its own).
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if self.rollout.async_steps:
            raise ValueError(SYNC_ONLY.format(why="evaluation has no updates to overlap"))
        if max(self.k) > self.n_samples:
            raise ValueError(f"k: pass@{max(self.k)} needs n_samples >= {max(self.k)} (got {self.n_samples})")
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmarks: names must be unique, got {names}")
        return self


class StagesConfig(StrictModel):
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    rlp: RLPConfig = Field(default_factory=RLPConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    prorl: ProRLConfig = Field(default_factory=ProRLConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)


class ChatConfig(StrictModel):
    """How prompts and turns are written for the model (every stage that renders a prompt).

    The model's own chat template is used when its tokenizer has one; otherwise the tiny
    recipe's format (:data:`slingshot.data.tokenizer.CHAT_TEMPLATE`). Generation stops on
    EOS, on the template's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, found by
    rendering a turn) and on ``stop_tokens``.
    """

    think_open: str = Field(default="<think>", min_length=1)
    think_close: str = Field(default="</think>", min_length=1)
    stop_tokens: list[str] = Field(default_factory=list)  # extra single tokens that end a turn


def borrowed_synth(stages: StagesConfig, variant: str) -> str | None:
    """The other variant whose synthesized set ``variant``'s SFT trains on (``sft.synth_from``),
    or None when it trains on its own (or on none). Such a variant runs no synthesis itself."""
    source = stages.sft.synth_from
    if stages.sft.enabled and stages.sft.use_synth and source not in (None, variant):
        return source
    return None


def runs_synth(stages: StagesConfig, variant: str) -> bool:
    """Whether ``variant`` runs a synthesis stage of its own."""
    return stages.synth.enabled and borrowed_synth(stages, variant) is None


class VariantOverrides(StrictModel):
    description: str = ""
    stages: dict[str, Any] = Field(default_factory=dict)  # deep-merged onto the base stages


class PipelineConfig(StrictModel):
    pipeline: PipelineMeta = Field(default_factory=PipelineMeta)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    # Override the function a stage kind runs ("module:function"); default slingshot.stages.<kind>:run.
    entrypoints: dict[str, Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]] = Field(
        default_factory=dict
    )
    variants: dict[Name, VariantOverrides] = Field(default_factory=lambda: {"main": VariantOverrides()})
    _variant_cache: dict[str, StagesConfig] = PrivateAttr(default_factory=dict)

    @field_validator("variants")
    @classmethod
    def _non_empty(cls, value: dict[str, VariantOverrides]) -> dict[str, VariantOverrides]:
        if not value:
            raise ValueError("at least one variant is required")
        return value

    @model_validator(mode="after")
    def _inline_thought_template(self) -> PipelineConfig:
        # One template for both ends: the reasoning corpus's inline thoughts default to RLP's.
        inline = self.data.inline_thoughts
        if inline.template is None:
            inline.template = self.stages.rlp.thought_template.model_copy()
        return self

    def variant_stages(self, variant: str) -> StagesConfig:
        """The stage configs of one variant: base stages with its overrides merged in."""
        if variant not in self.variants:
            raise KeyError(f"unknown variant '{variant}' (known: {', '.join(self.variants)})")
        if variant not in self._variant_cache:
            merged = deep_merge(self.stages.model_dump(mode="json"), self.variants[variant].stages)
            self._variant_cache[variant] = StagesConfig.model_validate(merged)
        return self._variant_cache[variant]

    @property
    def results_dir(self) -> Path:
        return Path(self.pipeline.results_dir)

    @property
    def work_dir(self) -> Path:
        return Path(self.pipeline.work_dir)

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{(self.results_dir / 'mlflow.db').resolve()}"

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.pipeline.name


# --------------------------------------------------------------------------- helpers
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand_path(value: str) -> str:
    """Expand ``~`` and ``${VAR}``; an unset variable is an error, not an empty string."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise ValueError(f"environment variable ${{{name}}} used in '{value}' is not set")
        return os.environ[name]

    return os.path.expanduser(_ENV_VAR.sub(substitute, value))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in (dicts merge, everything else replaces)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
