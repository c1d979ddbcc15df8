"""Names moved out of report.py, dist/backend.py and config.py still answer at their old homes (the same objects)."""

from __future__ import annotations

import importlib

import pytest

MOVED = {
    "flexpl.report.html": {
        "flexpl.report.runs": ["Run", "SeedGroup", "pareto_front", "discover_runs", "load_runs", "seed_groups_of",
                               "_float", "_read_csv", "_short_labels", "_cmap_color"],
        "flexpl.report.plots": ["FIGURES", "WHAT_COLORS", "MAX_TIMELINES", "GREY", "_RC", "make_figures",
                                "fig_accuracy_vs_round", "fig_accuracy_vs_cost", "fig_pareto", "fig_energy_per_node",
                                "fig_bytes_per_link", "fig_timeline", "fig_seeds_accuracy", "fig_seeds_costs",
                                "_png", "_legend_right", "_names", "_grouped_bars", "_run_legend", "_time_unit",
                                "_pct", "_round_start", "_ms"],
        "flexpl.report.tables": ["BEST", "_flat", "_table", "_img", "_configs", "_seeds_html_table"],
    },
    "flexpl.dist.backend": {
        "flexpl.dist.ranks": ["WorkerFailure", "node_ranks", "_Status", "_log", "_where"],
        "flexpl.dist.messages": ["_eval_sources", "_eval_engine", "_point_to_root", "_barrier",
                                        "_while_rank0_works"],
        "flexpl.dist.worker": ["STARTUP_TIMEOUT_S", "FAULT_ENV", "EXIT_PEER_FAILURE", "run_worker",
                                      "_gather_summary", "_set_up_and_meet", "_work", "_env_int"],
        "flexpl.dist.launch": ["_PRELOAD", "_free_port", "_read_status", "blame", "_worker_process", "launch",
                                      "_supervise", "run_dist"],
    },
    "flexpl.config.scenario": {
        "flexpl.config.base": ["_Strict"],
        "flexpl.config.training": ["OptimizerCfg", "AggregatorCfg", "TrainingCfg"],
        "flexpl.config.data": ["PartitionCfg", "TransformCfg", "DataFallbackCfg", "DataCfg"],
        "flexpl.config.plan": ["NodeCfg", "LinkCfg", "SyncCfg", "StageCfg", "PlanCfg"],
        "flexpl.config.engine": ["EnergyCfg", "CostsCfg", "EvaluationCfg", "EngineCfg", "Probability", "StragglerCfg",
                                 "NodeFailureCfg", "LinkFailureCfg", "FailuresCfg"],
        "flexpl.config.load": ["builtin_scenarios", "_read_scenario_text", "parse_set", "apply_set", "_one_line",
                               "flatten_overrides", "apply_strategy_overrides"],
    },
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_names_answer_at_their_old_home(old):
    home = importlib.import_module(old)
    for new, names in MOVED[old].items():
        mod = importlib.import_module(new)
        missing = [n for n in names if getattr(home, n, None) is not getattr(mod, n)]
        assert missing == [], f"{old} lacks (or has other objects for) {new}: {missing}"


def test_the_scenario_schema_still_validates_through_the_moved_sections():
    """Scenario's section fields resolve to the moved classes (pydantic reads them from config's namespace)."""
    from flexpl.config import engine as config_engine
    from flexpl.config import plan as config_plan
    from flexpl.config import scenario as config
    from flexpl.config import training as config_training

    scn = config.load_scenario("digits-star", ["plan.cut=1", "engine.timeout_s=5", "training.optimizer.lr=0.1"])
    assert isinstance(scn.training, config_training.TrainingCfg) and scn.training.optimizer.lr == 0.1
    assert isinstance(scn.engine, config_engine.EngineCfg) and scn.engine.timeout_s == 5
    assert isinstance(scn.plan, config_plan.PlanCfg) and scn.plan.cut == 1
    with pytest.raises(config.UserError, match=r"^training\.optimizer\.lr: "):
        config.load_scenario("digits-star", ["training.optimizer.lr=-1"])
