"""The benchmark scenarios, one module each; ``SCENARIO_NAMES`` is the run order."""

from __future__ import annotations

import importlib

from bench._scenario import Scenario

SCENARIO_NAMES: tuple[str, ...] = (
    "benchling_import",
    "benchling_validate",
    "benchling_annotate",
    "single_table",
    "self_ref_chain",
    "mixed_keys",
    "no_returning",
    "joined_inheritance",
)


def load(name: str) -> Scenario:
    """The scenario object of module ``bench.scenarios.<name>``."""
    if name not in SCENARIO_NAMES:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIO_NAMES)}")
    module = importlib.import_module(f"bench.scenarios.{name}")
    scenario = module.SCENARIO
    if not isinstance(scenario, Scenario):
        raise TypeError(f"bench.scenarios.{name}.SCENARIO is not a Scenario")
    return scenario


def load_all(names: tuple[str, ...] | list[str] = SCENARIO_NAMES) -> list[Scenario]:
    return [load(n) for n in names]
