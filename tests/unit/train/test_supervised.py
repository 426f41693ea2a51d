"""The shared supervised loop's settings and data order (the loop itself runs in
tests/unit/stages/test_sft.py, through the SFT stage)."""

from slingshot.config import OptimizerConfig, SFTConfig
from slingshot.train.supervised import EpochSchedule, SupervisedSettings, shard_micro_batches


def test_settings_come_from_the_sft_config():
    cfg = SFTConfig.model_validate(
        {
            "seq_length": 512,
            "micro_batch_size": 3,
            "grad_accum": 5,
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
        grad_accum=5,
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
        seq_length=64, micro_batch_size=2, grad_accum=2, epochs=2.5, optimizer=OptimizerConfig(), seed=3
    )
    sched = EpochSchedule(lengths, settings, world_size=1)
    again = EpochSchedule(lengths, settings, world_size=2)  # 2 ranks x accum 2 x 2 = 8 rows
    assert sched.global_rows == 4 and again.global_rows == 8
    epoch0 = [i for step in range(1, sched.steps_per_epoch[0] + 1) for row in sched.batch(step) for i in row]
    assert sorted(epoch0) == list(range(50))  # every example once per epoch
    first1 = sched.batch(sched.steps_per_epoch[0] + 1)
    assert first1 != sched.batch(1)  # a new order in epoch 2
    assert sched.steps_per_epoch[2] == round(sched.steps_per_epoch[0] * 0.5)
    fresh = EpochSchedule(lengths, settings, world_size=1)
    assert [fresh.batch(s) for s in range(sched.total_steps, 0, -1)] == [
        sched.batch(s) for s in range(sched.total_steps, 0, -1)
    ]
    # Rank shares tile the global batch in order, whatever the split.
    rows = sched.batch(1)
    split = shard_micro_batches(rows, 0, 2, 2, 1) + shard_micro_batches(rows, 1, 2, 2, 1)
    assert [r for mb in split for r in mb] == rows
