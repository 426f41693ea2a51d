"""``DataConfig``: everything the data stage builds for a recipe (defaults: tiny CPU recipe)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from slingshot.data.corpora import CorpusSpec
from slingshot.data.tasks import BUILTIN_FAMILIES, SplitSizes, check_settings, get_family

# The default suite: every built-in family (all have teacher renderers).
DEFAULT_FAMILIES: tuple[str, ...] = BUILTIN_FAMILIES


class ThoughtTemplate(BaseModel):
    """How a thought is written into text: ``{open}{thought}{close}{after}{continuation}``.

    One template for both ends of RLP: the data stage writes the inline thoughts of the
    reasoning corpus with it (``data.inline_thoughts``), and RLP renders its sampled thoughts
    with it (``stages.rlp.thought_template``), so the model is scored on a format it has
    seen. ``close`` must be a single token (generation stops on it).
    """

    model_config = ConfigDict(extra="forbid")

    open: str = Field(default="<think>", min_length=1)
    close: str = Field(default="</think>", min_length=1)
    after: str = ""  # written between the closed thought and the continuation (not sampled)

    def render(self, thought: str, continuation: str) -> str:
        return f"{self.open}{thought}{self.close}{self.after}{continuation}"


class InlineThoughts(BaseModel):
    """Reasoning documents written as plain statements whose answer may carry an inline thought.

    A fraction ``statement_fraction`` of the reasoning records is written as
    ``{question}\n{answer}`` instead of a chat turn, and a fraction ``thought_fraction`` of
    those carries the teacher's thought before the answer in ``template``:
    ``{question}\n<think>{thought}</think>{answer}``. Pretraining then teaches that a thought
    may precede a continuation and help predict it (what RLP rewards); the plain statements
    are the positions where RLP can insert one. ``template`` None: ``stages.rlp.thought_template``.
    """

    model_config = ConfigDict(extra="forbid")

    statement_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    thought_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    template: ThoughtTemplate | None = None


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        default=None, description="load this local HF tokenizer instead of training one (e.g. a base model's)"
    )
    vocab_size: int = Field(
        default=2048, ge=300, description="BPE vocabulary incl. 256 bytes + special tokens"
    )
    min_frequency: int = Field(default=2, ge=1)
    max_train_docs: int = Field(default=20000, ge=1, description="documents read to train the BPE")


class DataConfig(BaseModel):
    """Data stage config. Output layout under ``out_dir`` (see ``build_tiny_corpora``)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    families: list[str] = Field(default_factory=lambda: list(DEFAULT_FAMILIES))
    task_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="reasoning-gym kwargs per family over its built-in setting, e.g. "
        "{basic_arithmetic: {max_terms: 2, max_digits: 1}}",
    )
    splits: SplitSizes = Field(
        default_factory=SplitSizes,
        description="instances PER FAMILY; held-out (validation, test) drawn first",
    )
    general_docs: int = Field(default=4000, ge=0, description="procedurally generated general-text documents")
    general_min_sentences: int = Field(default=3, ge=1)
    general_max_sentences: int = Field(default=8, ge=1)
    reasoning_samples_per_entry: int = Field(
        default=1, ge=1, description="teacher traces per training task instance in the reasoning corpus"
    )
    teacher_error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="wrong-trace rate in the reasoning corpus (0: all correct)"
    )
    inline_thoughts: InlineThoughts = Field(default_factory=InlineThoughts)
    extra_corpora: list[CorpusSpec] = Field(
        default_factory=list, description="user corpora (JSONL/Parquet/HF disk) also tokenized to .bin/.idx"
    )
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    write_indexed: bool = Field(default=True, description="write Megatron .bin/.idx per corpus")

    @field_validator("families")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for name in value:
            get_family(name)  # unknown names fail listing the valid ones
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate task families: {value}")
        return value

    @field_validator("task_settings")
    @classmethod
    def _settings_of_used_families(cls, value: dict[str, dict[str, Any]], info: ValidationInfo) -> dict:
        families = info.data.get("families", [])
        for name, kwargs in value.items():
            if name not in families:
                raise ValueError(f"{name!r} is not in data.families {families}")
            check_settings(name, kwargs)
        return value
