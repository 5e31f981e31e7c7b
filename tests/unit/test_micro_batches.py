import pytest

from policy_split_megatron.trainer.forward import plan_micro_batches


def test_packs_consecutive_rows_under_the_budget():
    # budget 12: [5,3] -> 2 rows x 5 = 10 ok, adding 6 -> 3 x 6 = 18 > 12: new batch; [6,2] -> 12 ok;
    # 7 alone would be 3 x 7 = 21: new batch; 20 exceeds the budget alone: its own batch.
    assert plan_micro_batches([5, 3, 6, 2, 7, 20, 1], 12) == [[0, 1], [2, 3], [4], [5], [6]]


def test_every_row_once_in_order():
    lengths = [3, 9, 4, 4, 1, 8, 2, 2, 2]
    batches = plan_micro_batches(lengths, 10)
    assert [r for b in batches for r in b] == list(range(len(lengths)))
    assert all(len(b) * max(lengths[r] for r in b) <= 10 or len(b) == 1 for b in batches)


def test_rejects_non_positive_budget():
    with pytest.raises(ValueError, match="token_budget"):
        plan_micro_batches([1], 0)


def test_fp8_models_pad_rows_to_the_gemm_alignment():
    from types import SimpleNamespace

    from policy_split_megatron.trainer.forward import sequence_alignment

    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(**config))

    assert sequence_alignment(model(fp8=None, fp8_recipe="tensorwise")) == 1
    assert sequence_alignment(model(fp8="hybrid", fp8_recipe="tensorwise")) == 16
    assert sequence_alignment(model(fp8="e4m3", fp8_recipe="mxfp8")) == 32
    assert sequence_alignment(SimpleNamespace()) == 1  # no config: nothing to align
