"""``python -m recbole_mm.bench.across``: one model under two regimes, paired per user by history length."""

import pytest

from recbole_mm.bench import across, pipeline

USERS = [str(user) for user in range(12)]
LENGTHS = {user: (10 if int(user) < 4 else 40 if int(user) < 8 else 120) for user in USERS}  # 4 short, 4 mid, 4 long


def _row(model, seed, values):
    row = dict(pipeline.new_row(model, "toy", seed), status="ok")
    row["per_user"] = {"users": USERS, "excl": list(values), "full": list(values)}
    return row


def test_length_groups_follow_the_shorter_input():
    groups = across.length_groups(LENGTHS, max_len=50, window=32)
    assert [(label, len(users)) for label, users in groups] == [("1-32", 4), ("33-49", 4), ("50+", 4)]


def test_the_same_model_is_paired_per_user_across_regimes_and_group():
    base = [0.1 + 0.01 * (index % 3) for index in range(12)]
    gain_on_short = [value + (0.2 if index < 4 else 0.0) for index, value in enumerate(base)]
    first = [_row("M", seed, base) for seed in (1, 2, 3)]
    second = [_row("M", seed, gain_on_short) for seed in (1, 2, 3)]
    groups = across.length_groups(LENGTHS, 50, 32)
    header, _, row = across.across_table(first, second, ["dense", "long"], ["M", "absent"], groups, "excl")
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert header.startswith("| Model | Seeds | 1-32 items (4 users): dense -> long | 1-32: Δ [95% CI] |")
    assert cells[:4] == ["M", "3 / 3", "0.1075 -> 0.3075", "+0.2000 [+0.2000, +0.2000] better"]  # the short users gained
    assert cells[5].endswith("tie") and cells[7].endswith("tie")  # the others read the same and score the same
    two = across.across_table(first[:2], second, ["dense", "long"], ["M"], groups, "excl")[2]
    assert "+0.2000 [+0.2000, +0.2000] tie (2 seeds)" in two  # a claim needs 3 seeds a side


def test_regimes_must_share_their_users():
    with pytest.raises(SystemExit, match="share a dataset"):
        across.compare(["dense", "sparse"], "unused", ["SASRec"])
    with pytest.raises(SystemExit, match="two regimes"):
        across.main(["--regimes", "dense"])
