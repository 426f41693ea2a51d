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


def test_seeds_per_prompt_make_each_prompts_samples_independent_of_the_rest_of_the_call():
    """How sharded RL stages sample what one process does: with one seed per prompt, a
    prompt's samples depend on its seed only, not on the prompts beside it or their order."""
    import pytest

    backend = HFRollout(tiny_llama(), pad_token_id=0, stop_token_ids=[5])
    prompts, seeds = [[1, 2, 3], [4, 6], [7, 8, 9, 10]], [11, 22, 33]

    def sample(ps: list[list[int]], ss: list[int]) -> list[list[list[int]]]:
        groups = backend.generate(ps, n=2, max_new_tokens=6, temperature=1.0, seed=ss)
        return [[r.completion_ids for r in g] for g in groups]

    together = sample(prompts, seeds)
    assert [sample([p], [s])[0] for p, s in zip(prompts, seeds, strict=True)] == together
    assert sample(prompts[::-1], seeds[::-1]) == together[::-1]
    assert sample([prompts[0]], [12]) != together[:1]  # the seed does matter
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        backend.generate(prompts, n=1, max_new_tokens=2, temperature=1.0, seed=[1, 2])
