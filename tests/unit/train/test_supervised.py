"""The shared supervised loop's settings and data order (the loop itself runs in
tests/unit/stages/test_sft.py, through the SFT stage)."""

from slingshot.config import OptimizerConfig, SFTConfig
from slingshot.train.supervised import EpochSchedule, SupervisedSettings, shard_micro_batches


def test_settings_come_from_the_sft_config():
    cfg = SFTConfig.model_validate(
        {
            "seq_length": 512,
            "micro_batch_size": 3,
            "global_batch_size": 30,
            "epochs": 1.5,
            "optimizer": {"lr": 0.01, "warmup_steps": 7},
            "packing": False,
            "eval_every": 11,
            "log_every": 13,
            "data_parallel": "allreduce",
        }
    )
    assert SupervisedSettings.from_config(cfg, seed=17) == SupervisedSettings(
        seq_length=512,
        micro_batch_size=3,
        global_batch_size=30,
        epochs=1.5,
        optimizer=OptimizerConfig(lr=0.01, warmup_steps=7, weight_decay=0.0),  # SFT default
        packing=False,
        eval_every=11,
        log_every=13,
        seed=17,
        data_parallel="allreduce",
    )


def test_schedule_is_a_seeded_permutation_per_epoch():
    lengths = [10 + (i * 7) % 40 for i in range(50)]
    settings = SupervisedSettings(
        seq_length=64,
        micro_batch_size=2,
        global_batch_size=4,
        epochs=2.5,
        optimizer=OptimizerConfig(),
        seed=3,
    )
    sched = EpochSchedule(lengths, settings)
    assert sched.global_rows == 4
    assert settings.grad_accum(1) == 2 and settings.grad_accum(2) == 1  # the split, not the batch
    epoch0 = [i for step in range(1, sched.steps_per_epoch[0] + 1) for row in sched.batch(step) for i in row]
    assert sorted(epoch0) == list(range(50))  # every example once per epoch
    first1 = sched.batch(sched.steps_per_epoch[0] + 1)
    assert first1 != sched.batch(1)  # a new order in epoch 2
    assert sched.steps_per_epoch[2] == round(sched.steps_per_epoch[0] * 0.5)
    fresh = EpochSchedule(lengths, settings)
    assert [fresh.batch(s) for s in range(sched.total_steps, 0, -1)] == [
        sched.batch(s) for s in range(sched.total_steps, 0, -1)
    ]
    # Rank shares tile the global batch in order, whatever the split.
    rows = sched.batch(1)
    split = shard_micro_batches(rows, 0, 2, 2, 1) + shard_micro_batches(rows, 1, 2, 2, 1)
    assert [r for mb in split for r in mb] == rows


def test_global_batch_must_split_evenly_over_micro_batches_and_ranks():
    import pytest

    settings = SupervisedSettings(
        seq_length=64, micro_batch_size=2, global_batch_size=6, epochs=1, optimizer=OptimizerConfig()
    )
    assert settings.grad_accum(1) == 3 and settings.grad_accum(3) == 1
    with pytest.raises(ValueError, match=r"stages\.sft\.global_batch_size \(6\).*\(2 x 2 = 4\)"):
        settings.grad_accum(2)
    with pytest.raises(ValueError, match="global_batch_size .5. must be a multiple of micro_batch_size .2."):
        SFTConfig.model_validate({"micro_batch_size": 2, "global_batch_size": 5})
    with pytest.raises(ValueError, match="grad_accum is no longer a key: set global_batch_size"):
        SFTConfig.model_validate({"grad_accum": 2})


def test_an_uneven_global_batch_is_refused_before_submission(tmp_path):
    from stages import pipeline_config

    from slingshot.validate import check_plan

    sft = {"micro_batch_size": 2, "global_batch_size": 6, "resources": {"nodes": 2, "gpus_per_node": 2}}
    problems = check_plan(pipeline_config(tmp_path, {"stages": {"sft": sft}}))
    assert (
        "stages.sft.global_batch_size (6) must be a multiple of stages.sft.micro_batch_size x ranks "
        "(2 x 4 = 8) (the ranks of stages.sft.resources)"
    ) in problems
    sft["global_batch_size"] = 16
    assert not [
        p for p in check_plan(pipeline_config(tmp_path, {"stages": {"sft": sft}})) if "global_batch" in p
    ]
