"""A stand-in for ``recbole_mm.bench.runner.run_model`` in tests of the benchmark's planning, cache and tables."""

from recbole_mm.bench import pipeline


def tuned_score(config, seed):
    """Rewards lr 0.003 and low dropout (of whatever dropout key the model uses); seeds differ a little."""
    dropout = config.get("hidden_dropout_prob", config.get("dropout_prob"))
    return config["learning_rate"] * 10 - dropout / 10 + seed / 1e6


def fake_run_model(calls, score=tuned_score, users=2, spread=0.0, ms_per_step=10.0):
    """``run_model`` that records ``(model, seed, config)`` in ``calls`` and returns an ok row scoring
    ``score(config, seed)``, with per-user NDCG of ``users`` users at that score +- ``spread`` (alternating)."""

    def run(model, dataset, config, seed=2020, data_path=None, **options):
        calls.append((model, seed, dict(config)))
        value = score(config, seed)
        per_user = [value + (spread if user % 2 else -spread) for user in range(users)]
        step = ms_per_step(config) if callable(ms_per_step) else ms_per_step
        row = dict(pipeline.new_row(model, dataset, seed), status="ok", best_valid=value, uses_features=False, wall_s=0.1,
                   exclude_history=True, train_ms_per_step=step, repeat_share=0.0,
                   **{"ndcg@10": value, "full_ndcg@10": value, "excl_ndcg@10": value})
        row["per_user"] = {"users": [str(user) for user in range(users)], "full": per_user, "excl": per_user}
        return row

    return run
