"""Locust load shapes: ramp, soak and spike, parametrised by a config.Shape. The classes are abstract;
`shape_class` returns a concrete subclass bound to one configuration, which is the single shape class
the locustfile exposes (Locust runs the first shape class it finds)."""
from __future__ import annotations

from locust import LoadTestShape

from loadtest.config import Shape


class _ConfiguredShape(LoadTestShape):
    abstract = True
    spec: Shape

    def tick(self):
        t = self.get_run_time()
        if t >= self.spec.duration_s:
            return None  # stops the run
        return self.users_at(t), self.spec.spawn_rate

    def users_at(self, t: float) -> int:
        raise NotImplementedError


class RampShape(_ConfiguredShape):
    """start_users, then one more user every step_s seconds up to users."""

    abstract = True

    def users_at(self, t: float) -> int:
        return min(self.spec.users, self.spec.start_users + int(t // self.spec.step_s))


class SoakShape(_ConfiguredShape):
    """users for the whole duration."""

    abstract = True

    def users_at(self, t: float) -> int:
        return self.spec.users


class SpikeShape(_ConfiguredShape):
    """base_users, users during [spike_at_s, spike_at_s + spike_s), then base_users again."""

    abstract = True

    def users_at(self, t: float) -> int:
        in_spike = self.spec.spike_at_s <= t < self.spec.spike_at_s + self.spec.spike_s
        return self.spec.users if in_spike else self.spec.base_users


KINDS = {"ramp": RampShape, "soak": SoakShape, "spike": SpikeShape}


def shape_class(spec: Shape) -> type[LoadTestShape]:
    """A concrete shape class for spec (abstract=False makes Locust pick it up)."""
    base = KINDS[spec.kind]
    return type(base.__name__.replace("Shape", "") + "Load", (base,), {"abstract": False, "spec": spec})
