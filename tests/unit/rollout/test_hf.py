"""The HF generate() rollout backend: groups of samples per prompt, stop tokens, truncation."""

from tiny_hf import tiny_llama

from slingshot.rollout.hf import HFRollout


def test_hf_rollout_groups_samples_and_flags_truncation():
    model = tiny_llama()
    stop = 5
    backend = HFRollout(model, pad_token_id=0, stop_token_ids=[stop])
    groups = backend.generate([[1, 2, 3], [4, 6]], n=3, max_new_tokens=6, temperature=1.0, seed=0)
    assert [len(g) for g in groups] == [3, 3]
    for prompt, group in zip([[1, 2, 3], [4, 6]], groups, strict=True):
        for r in group:
            assert r.prompt_ids == prompt
            assert r.finished == (r.completion_ids[-1] == stop)
            assert r.finished or len(r.completion_ids) == 6
            assert stop not in r.completion_ids[:-1]
