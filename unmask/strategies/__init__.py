"""Built-in unmask policies and stop criteria, registered through the same hooks as any plug-in (the built-in
constraints: ``unmask.constraints``)."""

from __future__ import annotations

from unmask.core.plugins import Registrar, hookimpl
from unmask.strategies.edit import EditPolicy
from unmask.strategies.entropy_bound import EntropyBoundPolicy
from unmask.strategies.entropy_threshold import EntropyThresholdPolicy
from unmask.strategies.freedave import FreeDavePolicy
from unmask.strategies.local_leap import LocalLeapPolicy
from unmask.strategies.learn2pd import Learn2PDPolicy, example_learn2pd
from unmask.strategies.oracle import OraclePolicy, example_oracle
from unmask.strategies.prophet import ProphetStop
from unmask.strategies.remdm import ReMDMPolicy
from unmask.strategies.wino import WinoPolicy
from unmask.strategies.stops import AnyStop, EoTPStop, MaxNFEStop, NoStop
from unmask.strategies.threshold import ThresholdPolicy
from unmask.strategies.topk import RandomPolicy, TopKPolicy
from unmask.strategies.union import UnionPolicy

__all__ = [
    "TopKPolicy", "RandomPolicy", "ThresholdPolicy", "EntropyBoundPolicy", "OraclePolicy", "UnionPolicy", "Learn2PDPolicy",
    "LocalLeapPolicy", "FreeDavePolicy", "ReMDMPolicy", "WinoPolicy", "EditPolicy", "EntropyThresholdPolicy", "NoStop", "EoTPStop", "MaxNFEStop", "AnyStop",
    "ProphetStop",
]


@hookimpl
def unmask_register_policies(registry: Registrar) -> None:
    registry.add("topk", TopKPolicy)
    registry.add("random", RandomPolicy)
    registry.add("threshold", ThresholdPolicy)
    registry.add("entropy_bound", EntropyBoundPolicy)
    registry.add("oracle", OraclePolicy, example=example_oracle)
    registry.add("learn2pd", Learn2PDPolicy, example=example_learn2pd)
    registry.add("union", UnionPolicy, example=lambda **_: UnionPolicy(policies=["topk", "threshold"]))
    registry.add("local_leap", LocalLeapPolicy)
    registry.add("freedave", FreeDavePolicy)
    registry.add("entropy_threshold", EntropyThresholdPolicy)
    registry.add("remdm", ReMDMPolicy)
    registry.add("wino", WinoPolicy)
    registry.add("edit", EditPolicy)


@hookimpl
def unmask_register_stops(registry: Registrar) -> None:
    registry.add("none", NoStop)
    registry.add("eotp", EoTPStop)
    registry.add("max_nfe", MaxNFEStop, example=lambda **_: MaxNFEStop(n=3))
    registry.add("any", AnyStop, example=lambda **_: AnyStop(stops=["eotp", "max_nfe:n=3"]))
    registry.add("prophet", ProphetStop)
