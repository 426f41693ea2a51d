"""The plan's node digests: they change exactly when something that determines a node's result
changes, and variants still share every node whose result would be the same."""

from __future__ import annotations

from typing import Any

from slingshot.config import MODEL_CHAIN, PHASED_STAGES, PipelineConfig, StagesConfig
from slingshot.plan import Plan, build_plan

# Two pretraining phases, then rlp -> synth -> sft -> one ProRL phase: the default chain.
STAGES: dict[str, Any] = {
    "pretrain": {
        "phases": [
            {"name": "p1", "token_fraction": 0.5, "blend": {"general": 1.0}},
            {"name": "p2", "token_fraction": 0.5, "blend": {"general": 0.5, "reasoning": 0.5}},
        ]
    },
    "prorl": {"phases": [{"name": "len1k", "steps": 2, "max_response_tokens": 1024}]},
}


def plan_of(variants: dict[str, Any], **top: Any) -> Plan:
    return build_plan(PipelineConfig.model_validate({"stages": STAGES, "variants": variants, **top}))


def digests(plan: Plan, variant: str) -> dict[str, str]:
    """Stage name -> digest of the node ``variant`` runs."""
    return {stage: plan.nodes[key].digest for (v, stage), key in plan.by_variant.items() if v == variant}


STAGE_NAMES = [
    "pretrain-p1",
    "pretrain-p2",
    "rlp",
    "synth",
    "sft",
    "prorl-len1k",
    "evaluate-pretrain",
    "evaluate-rlp",
    "evaluate-sft",
    "evaluate-prorl",
]


def test_the_chain_is_laid_out_in_recipe_order():
    plan = plan_of({"main": {}})
    assert sorted(digests(plan, "main")) == sorted(STAGE_NAMES)
    assert plan.node("main", "synth").model_from == "main/rlp"
    assert plan.node("main", "sft").upstream == ["data", "main/rlp", "main/synth"]
    assert plan.node("main", "prorl-len1k").model_from == "main/sft"
    assert [n.key for n in plan.ordered()][-1] == "report"


def test_synthesis_digest_names_the_variant_its_seed_is_drawn_for():
    # stages/synth.py seeds on ctx.variant: a renamed variant synthesizes another dataset.
    a, z = digests(plan_of({"a": {}}), "a"), digests(plan_of({"z": {}}), "z")
    changed = {stage for stage in STAGE_NAMES if a[stage] != z[stage]}
    assert changed == {"synth", "sft", "prorl-len1k", "evaluate-sft", "evaluate-prorl"}


def test_identical_variants_still_share_synthesis_and_what_follows():
    plan = plan_of({"a": {}, "b": {}})
    for stage in STAGE_NAMES:
        node = plan.node("b", stage)
        assert node.key == f"a/{stage}" and node.variants == ["a", "b"]
    assert all(n.owner in ("", "a") for n in plan.nodes.values())


def test_variants_that_differ_before_synthesis_get_their_own_synthesis():
    plan = plan_of({"a": {}, "b": {"stages": {"rlp": {"group_size": 4}}}})
    assert plan.node("b", "pretrain-p2").key == "a/pretrain-p2"
    assert plan.node("b", "rlp").key == "b/rlp"
    assert plan.node("b", "synth").key == "b/synth" and plan.node("b", "synth").model_from == "b/rlp"


def test_the_pipeline_seed_is_in_every_stage_digest_but_not_the_data_digest():
    # The data stage draws from data.seed; every other stage derives its randomness from pipeline.seed.
    one, two = plan_of({"main": {}}), plan_of({"main": {}}, pipeline={"seed": 99})
    assert one.nodes["data"].digest == two.nodes["data"].digest
    assert all(one.nodes[key].digest != two.nodes[key].digest for key in one.nodes if key != "data")
    assert one.nodes.keys() == two.nodes.keys()


def test_a_replaced_entrypoint_changes_that_stage_and_what_follows():
    one, two = plan_of({"main": {}}), plan_of({"main": {}}, entrypoints={"rlp": "mymodule:run"})
    a, b = digests(one, "main"), digests(two, "main")
    assert {stage for stage in STAGE_NAMES if a[stage] != b[stage]} == {
        stage for stage in STAGE_NAMES if not stage.startswith(("pretrain", "evaluate-pretrain"))
    }


def test_the_report_digest_follows_the_variant_names_it_lists():
    # Without synthesis nothing per variant depends on its name, but the report's table does.
    without_synth = {"synth": {"enabled": False}, "sft": {"enabled": False}, "prorl": {"enabled": False}}
    a = plan_of({"a": {"stages": without_synth}})
    z = plan_of({"z": {"stages": without_synth}})
    assert digests(a, "a") == digests(z, "z")
    assert a.nodes["report"].digest != z.nodes["report"].digest


def test_the_chain_is_the_model_stages_of_the_config():
    assert MODEL_CHAIN == ("pretrain", "rlp", "sft", "prorl")
    fields = list(StagesConfig.model_fields)
    assert [f for f in fields if f in MODEL_CHAIN] == list(MODEL_CHAIN)  # recipe order is field order
    assert StagesConfig().evaluate.models == list(MODEL_CHAIN)
    assert all("phases" in StagesConfig.model_fields[kind].annotation.model_fields for kind in PHASED_STAGES)
    phased = [k for k in MODEL_CHAIN if "phases" in StagesConfig.model_fields[k].annotation.model_fields]
    assert tuple(phased) == PHASED_STAGES


def test_sft_synth_from_gives_both_arms_the_first_arms_synthesized_set():
    # The pretraining ablation: the arms differ before synthesis, and synth_from in the base
    # stages makes both train SFT on arm a's set (a's own synth_from names itself).
    arms = {"a": {}, "b": {"stages": {"rlp": {"group_size": 4}}}}
    plan = build_plan(
        PipelineConfig.model_validate({"stages": {**STAGES, "sft": {"synth_from": "a"}}, "variants": arms})
    )
    assert plan.node("a", "sft").upstream == ["data", "a/rlp", "a/synth"]
    assert plan.node("b", "sft").upstream == ["data", "b/rlp", "a/synth"]
    assert plan.node("b", "sft").model_from == "b/rlp"
    assert "b/synth" not in plan.nodes  # b synthesizes nothing of its own
    # The set is part of SFT's identity: b's SFT digest differs from b's SFT on its own set.
    own = build_plan(PipelineConfig.model_validate({"stages": STAGES, "variants": arms}))
    assert own.node("b", "sft").digest != plan.node("b", "sft").digest
    assert own.node("a", "sft").digest == plan.node("a", "sft").digest  # a names itself: unchanged
