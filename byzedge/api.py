"""The Python API: :func:`simulate` a fleet on your own model and arrays.

Its keywords are the scenario's keys (:class:`byzedge.fleet_sim.scenario.Scenario`), with
the same names and defaults, so a scenario file and a call read alike::

    import byzedge

    result = byzedge.simulate(
        model=my_module,                     # nn.Module, factory, "pkg.mod:fn" or "mlp"
        data=(x, y),
        test_data=(x_test, y_test),
        devices=20,
        rounds=50,
        byzantine_defense="clipping-vr",
        attack="sign-flip",
        byzantine_fraction=0.2,
    )
    print(result.final_accuracy, [r.accepted for r in result.rounds])

The signature is derived from the scenario model when this module is imported, so a key
added to :class:`Scenario` is a keyword here at once; an unknown keyword is a
``TypeError`` naming it, as Python's own is. Two keys have a second name, the one the
coordinator's configuration uses (``coordinator.toml``), and either may be given:

======================  =====================
configuration           scenario
======================  =====================
``byzantine_defense``   ``defense``
``aggregation_config``  ``aggregation``
======================  =====================

torch and the simulator are imported inside :func:`simulate`, so ``import byzedge`` stays
light (:mod:`byzedge` resolves ``byzedge.simulate`` lazily).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from byzedge.fleet_sim.scenario import Scenario

if TYPE_CHECKING:
    from pathlib import Path

    from byzedge.fleet_sim.simulator import FlagCounts, RoundRecord
    from byzedge.models.spec import ModelSpec
    from byzedge.provisioning import Report

__all__ = [
    "CONFIG_NAMES",
    "SIMULATION_ONLY",
    "Simulation",
    "fleet_settings",
    "init",
    "scenario_options",
    "simulate",
]

CONFIG_NAMES: Mapping[str, str] = {
    "byzantine_defense": "defense",
    "aggregation_config": "aggregation",
}
"""The configuration's name of a scenario key, where the two differ (config -> scenario)."""

SIMULATION_ONLY: frozenset[str] = frozenset(
    {
        "name",
        "byzantine_fraction",
        "fault_plan",
        "byzantine_data",
        "attack",
        "attack_params",
        "trainer",
        "eval_every",
    }
)
"""Scenario keys with no meaning in a real fleet (injected faults, the simulator's own)."""

# Where each other scenario key goes in a fleet's configs: coordinator.toml's key, and
# agent.toml's (a dotted name is a table's key). dataset is the agents' data source and
# the coordinator's validation set.
_COORDINATOR_KEYS: Mapping[str, str] = {
    "rounds": "rounds",
    "participation_rate": "participation_rate",
    "devices_per_round": "devices_per_round",
    "algorithm": "algorithm",
    "method": "method",
    "aggregation": "aggregation_config",
    "max_byzantine_fraction": "max_byzantine_fraction",
    "certified_robustness": "certified_robustness",
    "server_learning_rate": "server_learning_rate",
    "anomaly_detection": "anomaly_detection",
    "anomaly_threshold": "anomaly_threshold",
    "device_reputation": "device_reputation",
    "reputation_decay": "reputation_decay",
    "loss": "loss",
    "seed": "seed",
    "model": "model",
    "dataset": "validation",
}
_AGENT_KEYS: Mapping[str, str] = {
    "model": "model",
    "compression": "compression",
    "sparsity": "sparsity",
    "error_feedback": "error_feedback",
    "momentum1": "momentum1",
    "seed": "seed",
    "epochs": "training.epochs",
    "learning_rate": "training.learning_rate",
    "batch_size": "training.batch_size",
    "loss": "training.loss",
    "dataset": "data.source",
    "partition": "data.partition",
    "alpha": "data.alpha",
}

# The arguments of simulate() that are not scenario keys.
_OWN = ("model", "data", "test_data", "input_shape")

Arrays = tuple[Any, Any]
"""``(features, labels)``: anything :func:`numpy.asarray` takes, with a row axis first."""


def scenario_options(caller: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check keyword arguments against the scenario's keys; map configuration names.

    Parameters
    ----------
    caller:
        The function's name, for the messages (``simulate``).
    options:
        The keywords given.

    Returns
    -------
    dict[str, Any]
        The options under the scenario's names.

    Raises
    ------
    TypeError
        For a keyword that is no scenario key (the message names it and suggests the
        closest key), or a key given under both its names.
    """
    known = set(Scenario.model_fields) | set(CONFIG_NAMES)
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"{caller}() got an unexpected keyword argument {key!r}{hint}"
            raise TypeError(msg)
        name = CONFIG_NAMES.get(key, key)
        if name in out:
            other = next(k for k, v in CONFIG_NAMES.items() if v == name)
            msg = f"{caller}() got {other!r} and {name!r}, two names of one key: give one"
            raise TypeError(msg)
        out[name] = value
    return out


def _scenario_parameters() -> list[inspect.Parameter]:
    """Every scenario key as a keyword-only parameter with the scenario's default."""
    parameters = []
    for name, info in Scenario.model_fields.items():
        if name == "model":
            continue  # simulate's own first argument, which takes more than a name
        default = info.get_default(call_default_factory=True)
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=info.annotation
            )
        )
        aliases = [alias for alias, key in CONFIG_NAMES.items() if key == name]
        parameters.extend(
            inspect.Parameter(
                alias, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=info.annotation
            )
            for alias in aliases
        )
    return parameters


@dataclass(frozen=True, slots=True)
class Simulation:
    """What :func:`simulate` returns.

    Attributes
    ----------
    final_accuracy:
        The task's metric of the final model on ``test_data`` (``metric`` names it:
        ``accuracy``, or ``r2`` for a regression); ``None`` if never evaluated.
    metric:
        ``accuracy`` (``loss = "cross-entropy"``) or ``r2`` (``loss = "mse"``).
    rounds:
        One record per round: ``round``, ``accuracy`` (the metric, ``None`` between
        ``eval_every`` rounds), ``accepted`` (updates the coordinator took), ``flagged``
        (device ids the anomaly scorer flagged), ``rejected`` (counts per reason),
        ``cohort_size``, ``byzantine_in_cohort``, ``fallback``.
    params:
        The final global model as one flat float32 vector (torch's ``named_parameters``
        order).
    compromised:
        The devices an attack or fault was injected into.
    flags:
        The anomaly flags against that ground truth, over the whole run.
    scenario:
        The scenario that ran, as a JSON-friendly dict.
    spec:
        The model's layout (and ONNX template), for :meth:`module`.
    duration_s:
        Wall time of the rounds.
    """

    final_accuracy: float | None
    metric: str
    rounds: list[RoundRecord]
    params: NDArray[np.float32]
    compromised: list[str]
    flags: FlagCounts
    scenario: dict[str, Any]
    spec: ModelSpec = field(repr=False)
    duration_s: float = 0.0

    @property
    def accuracies(self) -> list[float | None]:
        """The metric of each round (``None`` where not evaluated)."""
        return [r.accuracy for r in self.rounds]

    def module(self) -> Any:
        """A fresh ``torch.nn.Module`` of the model holding the final parameters."""
        from byzedge.models.params import load_vector_into  # noqa: PLC0415 - torch
        from byzedge.models.torch_modules import build_module  # noqa: PLC0415 - torch

        module = build_module(self.spec)
        load_vector_into(module, self.params)
        return module


def simulate(
    model: Any = None,
    data: Arrays | None = None,
    test_data: Arrays | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    **options: Any,
) -> Simulation:
    """Simulate a fleet in memory training ``model`` on ``data``; return what each round did.

    Every device runs the agent's code (local training, worker momentum, the update
    pipeline with its codec and Ed25519 seal, injected faults) and the coordinator's
    (ingest, anomaly scores, reputation, the robust rule); only the transport is a
    function call (:mod:`byzedge.fleet_sim.simulator`).

    Parameters
    ----------
    model:
        A ``torch.nn.Module`` (round 0 is its current parameters), a zero-argument
        callable returning one (built under ``torch.manual_seed(seed)``), a factory
        reference ``"package.module:function"``, or a registered name (``mlp``, ``cnn``,
        ``sensor-cnn``...). ``None``: the scenario's model (``mlp``), for the bundled
        data sets. The module declares one sample's shape as its ``input_shape``
        attribute, or ``input_shape`` gives it, or it is read from ``data``.
    data:
        ``(x, y)``, the training set dealt to the devices by ``partition``: ``x`` of shape
        ``(m, *input_shape)`` or flattened ``(m, prod(input_shape))``; ``y`` integer class
        labels ``(m,)`` (``loss = "cross-entropy"``) or real targets ``(m,)`` /
        ``(m, outputs)`` (``loss = "mse"``, ``partition = "iid"``). ``None``: the bundled
        data set ``dataset`` (digits).
    test_data:
        ``(x, y)`` held out for the metric every round; ``None`` measures it on ``data``
        (how well the fleet fits, not how it generalises).
    input_shape:
        One sample's shape, for a module that declares none and flat ``data``.
    **options:
        The scenario's keys, with its names and defaults (``devices=25``, ``rounds=20``,
        ``defense="clipping-vr"`` or ``byzantine_defense=...``, ``attack``,
        ``byzantine_fraction``, ``partition``, ``loss``, ``algorithm`` and ``method`` for
        a training method, ``trainer``, ``seed``...; the signature lists them all, and
        :class:`~byzedge.fleet_sim.scenario.Scenario` documents each).

    Returns
    -------
    Simulation
        ``final_accuracy``, ``metric``, ``rounds``, the final ``params`` and more.

    Raises
    ------
    TypeError
        For a keyword that is no scenario key (named in the message).
    ValueError
        For a value the scenario refuses, data whose shape or labels do not fit the model
        (both shapes in the message), or a model that cannot be built or exported.
    """
    values = scenario_options("simulate", options)
    if data is None and test_data is not None:
        raise ValueError("test_data needs data (the bundled data sets bring their own)")
    if data is not None and "dataset" in values:
        raise ValueError("give data or dataset, not both")
    if model is not None and not isinstance(model, str):
        values["model"] = "custom"  # replaced by the spec's name below
    elif model is not None:
        values["model"] = model
    elif data is not None:
        raise ValueError("data needs a model (a module, a factory or 'package.module:function')")
    scenario = _validated(values)

    from byzedge.fleet_sim.simulator import Simulator  # noqa: PLC0415 - heavy
    from byzedge.models.datasets import DigitsSplit  # noqa: PLC0415

    spec = None if model is None else _model_spec(model, data, input_shape, scenario.seed)
    split = None
    if spec is not None and data is not None:
        if not isinstance(model, str):
            scenario = scenario.with_changes(model=spec.name)
        classification = scenario.loss == "cross-entropy"
        train_x, train_y = _arrays(data, spec, classification, "data")
        test_x, test_y = (
            (train_x, train_y)
            if test_data is None
            else _arrays(test_data, spec, classification, "test_data")
        )
        split = DigitsSplit(train_x, train_y, test_x, test_y)
    simulator = Simulator(scenario, split, spec=spec)
    result = simulator.run()
    return Simulation(
        final_accuracy=result.final_accuracy,
        metric=result.metric,
        rounds=result.rounds,
        params=simulator.params.copy(),
        compromised=result.compromised,
        flags=result.flags,
        scenario=result.scenario,
        spec=simulator.spec,
        duration_s=result.duration_s,
    )


def _validated(values: dict[str, Any]) -> Scenario:
    """The scenario, or a ``ValueError`` naming each refused key."""
    try:
        return Scenario.model_validate(values, strict=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'scenario'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(problems) from None


def _model_spec(
    model: Any, data: Arrays | None, input_shape: Sequence[int] | None, seed: int
) -> ModelSpec:
    """The spec of ``model``: registry, factory reference, module or factory."""
    # torch first: a factory reference then exports in this process, not in a child.
    import torch  # noqa: PLC0415

    from byzedge.models import get_model_spec  # noqa: PLC0415
    from byzedge.models.torch_export import (  # noqa: PLC0415
        spec_from_factory,
        spec_from_module,
    )

    if isinstance(model, str):
        return get_model_spec(model)
    shape = input_shape
    if shape is None and data is not None:
        x = np.asarray(data[0])
        if x.ndim > 2:  # windows or images: their shape is one sample's
            shape = tuple(int(d) for d in x.shape[1:])
    if isinstance(model, torch.nn.Module):
        if getattr(model, "input_shape", None) is not None and input_shape is None:
            shape = None  # the module's own declaration wins over a guess from data
        return spec_from_module(model, name="custom", input_shape=shape)
    if callable(model):
        factory: Callable[[], torch.nn.Module] = model
        return spec_from_factory(factory, input_shape=shape, seed=seed)
    kind = type(model).__name__
    msg = f"model must be an nn.Module, a factory, a factory reference or a name, got {kind}"
    raise TypeError(msg)


def _arrays(
    pair: Arrays, spec: ModelSpec, classification: bool, what: str
) -> tuple[NDArray[np.float32], NDArray[Any]]:
    """``(x, y)`` as float32 features and int64 labels (or float32 targets), checked."""
    try:
        features, labels = pair
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a pair (x, y)") from None
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim < 2 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{what}: x {x.shape} and y {y.shape} need the same rows, at least one")
    if x.shape[1:] not in (spec.input_shape, (spec.input_dim,)):
        want = ", ".join(str(d) for d in spec.input_shape)
        flat = f" or (m, {spec.input_dim})" if len(spec.input_shape) > 1 else ""
        msg = f"{what}: x must have shape (m, {want}){flat} for model {spec.name!r}, got {x.shape}"
        raise ValueError(msg)
    if not classification:
        return x, y.astype(np.float32)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        msg = (
            f"{what}: loss 'cross-entropy' needs integer class labels (m,), got {y.dtype} "
            f"{y.shape}; give loss='mse' for real-valued targets"
        )
        raise ValueError(msg)
    if int(y.min()) < 0 or int(y.max()) >= spec.num_classes:
        msg = f"{what}: labels must be in [0, {spec.num_classes}) for the model's outputs"
        raise ValueError(msg)
    return x, y.astype(np.int64)


def _signature() -> inspect.Signature:
    own = inspect.signature(simulate)
    head = [own.parameters[name] for name in _OWN]
    return inspect.Signature(
        [*head, *_scenario_parameters()], return_annotation=own.return_annotation
    )


# Shown by help() and IDEs; simulate() itself takes **options and checks them.
simulate.__signature__ = _signature()  # type: ignore[attr-defined]


def fleet_settings(options: Mapping[str, Any]) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """Sort scenario keywords into a fleet's configs.

    Parameters
    ----------
    options:
        Scenario keys (either name of a renamed one), as :func:`init` takes them.

    Returns
    -------
    tuple[str | None, dict[str, Any], dict[str, Any]]
        The defense (``None`` when not given), the ``coordinator.toml`` keys and the
        ``agent.toml`` keys (tables as nested dicts).

    Raises
    ------
    TypeError
        For an unknown keyword, a simulation-only one (``attack``...), or a model given
        as an object rather than by name.
    """
    values = scenario_options("init", options)
    simulated = sorted(SIMULATION_ONLY & set(values))
    if simulated:
        msg = (
            f"init() got simulation-only keyword {simulated[0]!r}: a real fleet's faults "
            "are its own (or an agent's fault_plan); see byzedge.simulate"
        )
        raise TypeError(msg)
    model = values.get("model")
    if model is not None and not isinstance(model, str):
        msg = (
            "init() needs the model by name: a factory reference 'package.module:function' "
            "that every device can import, or a registered name"
        )
        raise TypeError(msg)
    defense = values.pop("defense", None)
    coordinator = {_COORDINATOR_KEYS[k]: v for k, v in values.items() if k in _COORDINATOR_KEYS}
    agent: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _AGENT_KEYS:
            continue
        table, _, name = _AGENT_KEYS[key].rpartition(".")
        (agent.setdefault(table, {}) if table else agent)[name] = value
    if "seed" in values:
        agent.setdefault("data", {})["seed"] = values["seed"]  # the same shards everywhere
    return defense, coordinator, agent


def init(
    path: str | Path,
    *,
    fleet: str,
    devices: int,
    host: str = "localhost",
    port: int = 8883,
    bind: str | None = None,
    force: bool = False,
    **options: Any,
) -> Report:
    """Provision a fleet folder, as ``byzedge init`` does, with the scenario's keywords.

    Writes the CA, certificates, keys, broker, coordinator, agent and monitor configs and
    systemd units under ``path`` (:mod:`byzedge.provisioning`). The keywords that mean
    something to a real fleet go into its configs under the configuration's names
    (``byzantine_defense``, ``rounds``, ``anomaly_threshold``, ``aggregation`` as
    ``[aggregation_config]``, ``algorithm`` and ``method``, ``loss``; on the agents
    ``model``, ``momentum1``, ``compression``, ``epochs``/``learning_rate``/``batch_size``
    as ``[training]``, ``dataset``/``partition``/``alpha`` as ``[data]``). Only the keys
    given are written: the rest keep the configs' own defaults, which are not all the
    scenario's (a coordinator runs forever unless ``rounds`` is given; agents train one
    epoch at learning rate 0.1). A model named by a factory reference is exported here
    into ``coordinator/model.onnx``, its ``model_template`` (torch must be importable).

    Parameters
    ----------
    path:
        The fleet folder to create (empty unless ``force``).
    fleet, devices, host, port, bind, force:
        As ``byzedge init``'s options (``bind`` defaults as ``--bind`` does).
    **options:
        Scenario keys that apply to a fleet (see above).

    Returns
    -------
    byzedge.provisioning.Report
        The devices provisioned, warnings, notes.

    Raises
    ------
    TypeError
        For an unknown keyword or a simulation-only one (``attack``, ``byzantine_fraction``,
        ``trainer``...).
    byzedge.provisioning.ProvisioningError
        For a value the configs refuse (the message names the key), or a folder that
        cannot be used.
    """
    from pathlib import Path  # noqa: PLC0415

    from byzedge import provisioning  # noqa: PLC0415
    from byzedge.models import is_factory_reference  # noqa: PLC0415

    defense, coordinator, agent = fleet_settings(options)
    model = coordinator.get("model")
    template = None
    if isinstance(model, str) and is_factory_reference(model):
        from byzedge.models import get_model_spec  # noqa: PLC0415

        try:
            template = get_model_spec(model).template
        except ValueError as exc:
            raise provisioning.ProvisioningError(str(exc)) from exc
        coordinator["model_template"] = "model.onnx"
    spec = provisioning.FleetSpec(
        fleet=fleet,
        host=host,
        port=port,
        bind=bind if bind is not None else provisioning.default_bind(host),
        byzantine_defense=defense if defense is not None else "clipping-vr",
        coordinator_settings=coordinator,
        agent_settings=agent,
    )
    root = Path(path)
    report = provisioning.init_fleet(root, spec, devices, force=force)
    if template is not None:
        (root / "coordinator" / "model.onnx").write_bytes(template)
    return report
