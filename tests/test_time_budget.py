"""The quickstart's time budget: how many training rows fit, from measured per-row costs.

The arithmetic is checked exactly here; the calibration and the refusal of a budget too short run
on the real MiniLM in tests/test_minilm.py."""

import pytest

from budgetlora.errors import UserError
from budgetlora.quickstart import MIN_BUDGET_ROWS, MachineRates, rows_for_time_budget

RATES = MachineRates(train_s_per_row=0.02, infer_s_per_row=0.01, seconds=5.0)


def test_rows_are_what_the_budget_leaves_in_whole_batches():
    # fixed: 20 s spent + 15 s reserve + 5,000 inference rows x 0.01 s = 85 s; each row 0.03 s
    rows = rows_for_time_budget(180, 20, RATES, fixed_inference_rows=5000, available=9500, batch_size=32,
                                reserve_s=15)
    assert rows == 3136  # floor(95 / 0.03) = 3166, down to whole batches of 32


def test_rows_stop_at_what_the_file_holds():
    rows = rows_for_time_budget(10_000, 20, RATES, fixed_inference_rows=5000, available=2000, batch_size=32,
                                reserve_s=15)
    assert rows == 1984  # all 2,000, in whole batches


def test_a_budget_too_short_is_refused_with_the_budget_that_fits():
    assert rows_for_time_budget(100, 20, RATES, fixed_inference_rows=5000, available=9500, batch_size=32,
                                reserve_s=15) == 480 >= MIN_BUDGET_ROWS
    with pytest.raises(UserError) as refused:
        rows_for_time_budget(90, 20, RATES, fixed_inference_rows=5000, available=9500, batch_size=32, reserve_s=15)
    message = str(refused.value)
    assert "\n" not in message and "at least 95 s" in message  # 85 s fixed + 320 rows x 0.03 s = 94.6 s
