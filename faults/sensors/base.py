"""What every sensor fault shares: the wrapped source, intensity, onset, intermittency, seeding.

A sensor fault is a :class:`~edge_agent.seams.SensorSource` that wraps the agent's real
source. On each :meth:`SensorFault.read` it reads the wrapped source and, if the fault is
active in that round, rewrites the features. When it is active, and every generator it
draws from, is its :class:`~faults._schedule.Schedule` (the one device-local attacks use):
active in round ``k`` when ``k >= start_round`` and a per-round coin with success
probability ``probability`` comes up heads; all randomness of round ``k`` (the coin and the
fault's own draws) comes from generators seeded by ``(seed, fault name, k)``, so re-reading
a round returns the same data, rounds may be read in any order, and a restarted agent sees
the same faults.

A fault class states its intensity's default and check in its class statement and adds
only its own parameters::

    class Drift(SensorFault, intensity=0.01, check=check_finite):
        name: ClassVar[str] = "drift"


    class Spikes(SensorFault, intensity=0.05, check=check_fraction):
        name: ClassVar[str] = "spikes"

        def __init__(
            self, source: SensorSource, *, magnitude: float = 1.0, **options: Unpack[SensorOptions]
        ) -> None:
            self.magnitude = check_positive("magnitude", magnitude)
            super().__init__(source, **options)

Its signature, as :func:`inspect.signature` reports it (``byzedge faults list``, the
injector's parameter check), is written out in full: ``(source, *, intensity=0.05,
magnitude=1.0, channels=None, start_round=0, probability=1.0, seed=0)``.

Channels are axis 1 of the features, whatever their shape: the columns of tabular rows
``(m, d)``, the sensor channels of windows ``(m, channels, length)``, the colour planes of
images ``(m, planes, h, w)``. A fault given ``channels`` (``[2]``: the third axis of an
accelerometer) rewrites those channels only and leaves the others as read.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypedDict

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import LocalData, SensorSource
from byzedge.faults._schedule import Scheduled
from byzedge.faults.errors import FaultConfigError

__all__ = ["IntensityCheck", "SensorFault", "SensorOptions", "as_features", "check_channels"]

IntensityCheck = Callable[[str, object], float]
"""``check(name, value) -> float``: one of :mod:`byzedge.faults._validate`'s checks."""


class SensorOptions(TypedDict, total=False):
    """The keyword arguments every sensor fault takes (see :class:`SensorFault`)."""

    intensity: float | None
    channels: list[int] | None
    start_round: int
    probability: float
    seed: int


class SensorFault(Scheduled, ABC):
    """Base class of the sensor-fault wrappers.

    Parameters
    ----------
    source:
        The sensor source being wrapped (the agent's real one, or another fault).
    intensity:
        The fault's strength; its meaning, range and default are given by each subclass
        (``None``: the default).
    channels:
        Indices along axis 1 of the features (the channels of ``(m, channels, length)``
        windows, the columns of ``(m, d)`` rows) the fault acts on; ``None`` (default):
        all of them. A read whose features have fewer channels is a ``ValueError``.
    start_round:
        First round in which the fault may be active (``>= 0``); earlier rounds pass the
        wrapped data through unchanged.
    probability:
        Chance in ``[0, 1]`` that the fault is active in a given round at or after
        ``start_round`` (intermittent faults); ``1.0`` means always.
    seed:
        Non-negative integer from which every per-round generator is derived.

    Notes
    -----
    Subclasses set :attr:`name` (the permanent registry name), give ``intensity=`` (the
    default) and ``check=`` (its validation) in the class statement, and implement
    :meth:`_apply`. Features are returned as new float32 arrays; the wrapped source's
    arrays are never modified. Labels pass through untouched.
    """

    acts_on: ClassVar[Literal["data", "update"]] = "data"
    default_intensity: ClassVar[float]
    """The intensity of a fault built without one."""
    intensity_check: ClassVar[staticmethod[[str, object], float]]
    """Validates ``intensity`` (raises :class:`~faults.errors.FaultConfigError`)."""
    __signature__: ClassVar[inspect.Signature]
    """Each subclass's constructor signature (see :func:`_full_signature`)."""

    def __init_subclass__(
        cls,
        *,
        intensity: float | None = None,
        check: IntensityCheck | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if intensity is not None:
            cls.default_intensity = intensity
        if check is not None:
            cls.intensity_check = staticmethod(check)
        if not hasattr(cls, "default_intensity") or not hasattr(cls, "intensity_check"):
            msg = f"{cls.__name__}: give intensity= and check= in the class statement"
            raise TypeError(msg)
        cls.__signature__ = _full_signature(cls)

    def __init__(
        self,
        source: SensorSource,
        *,
        intensity: float | None = None,
        channels: list[int] | None = None,
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.source = source
        chosen = self.default_intensity if intensity is None else intensity
        self.intensity = self.intensity_check("intensity", chosen)
        self.channels = check_channels(channels)
        self._init_schedule(start_round, probability, seed)

    @abstractmethod
    def _apply(self, data: LocalData, round_number: int, rng: np.random.Generator) -> LocalData:
        """Return the faulty version of ``data`` for an active round."""

    def read(self, round_number: int) -> LocalData:
        """Read the wrapped source and apply the fault if it is active this round.

        Parameters
        ----------
        round_number:
            The round whose data is read (``>= 0``).

        Returns
        -------
        LocalData
            The wrapped source's data, rewritten when the fault is active.
        """
        data = self.source.read(round_number)
        if not self.is_active(round_number):
            return data
        if self.channels is not None:
            self._check_width(data)
        faulty = self._apply(data, round_number, self.schedule.draws(round_number))
        if self.channels is None:
            return faulty
        return self._on_channels(data, faulty)

    def _check_width(self, data: LocalData) -> None:
        shape = np.shape(data.features)
        assert self.channels is not None  # noqa: S101 - the caller checked
        if len(shape) < 2 or max(self.channels) >= shape[1]:
            msg = (
                f"{self.name}: channels {list(self.channels)} do not fit features of shape "
                f"{shape} (channels are axis 1)"
            )
            raise ValueError(msg)

    def _on_channels(self, data: LocalData, faulty: LocalData) -> LocalData:
        """Keep the fault's rewrite on :attr:`channels` only; the rest reads as it was."""
        if np.shape(faulty.features) != np.shape(data.features):
            msg = f"{self.name}: a fault that removes rows cannot act on single channels"
            raise ValueError(msg)
        features = np.array(data.features, dtype=np.float32, copy=True)
        chosen = list(self.channels or ())
        features[:, chosen] = np.asarray(faulty.features, dtype=np.float32)[:, chosen]
        return LocalData(features=features, labels=data.labels)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(intensity={self.intensity!r}, "
            f"channels={None if self.channels is None else list(self.channels)!r}, "
            f"start_round={self.start_round!r}, probability={self.probability!r}, "
            f"seed={self.seed!r}, source={self.source!r})"
        )


def _full_signature(cls: type[SensorFault]) -> inspect.Signature:
    """``cls``'s constructor as callers see it: the shared options written out in full.

    ``(source, *, intensity=<cls default>, <cls's own parameters>, channels=None,
    start_round=0, probability=1.0, seed=0)``, whether ``cls`` defines ``__init__``
    (taking the shared options as ``**options``) or inherits it.
    """
    shared = inspect.signature(SensorFault.__init__).parameters
    own = [
        parameter
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name not in shared and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    intensity = shared["intensity"].replace(default=cls.default_intensity, annotation="float")
    schedule = [shared[name] for name in ("channels", "start_round", "probability", "seed")]
    return inspect.Signature([shared["source"], intensity, *own, *schedule])


def check_channels(channels: object) -> tuple[int, ...] | None:
    """``None``, or a non-empty list of distinct channel indices ``>= 0``, as a sorted tuple.

    Raises
    ------
    ValueError
        (:class:`~faults.errors.FaultConfigError`) naming ``channels`` otherwise.
    """
    if channels is None:
        return None
    if isinstance(channels, int) and not isinstance(channels, bool):
        channels = [channels]  # a plan may write one channel as a number
    if (
        not isinstance(channels, (list, tuple))
        or not channels
        or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in channels)
        or len(set(channels)) != len(channels)
    ):
        msg = f"channels must be a non-empty list of distinct indices >= 0, got {channels!r}"
        raise FaultConfigError(msg)
    return tuple(sorted(int(c) for c in channels))


def as_features(values: NDArray[np.floating]) -> NDArray[np.float32]:
    """Clip ``values`` to the sensor range ``[0, 1]`` (NaN stays NaN) as float32."""
    clipped: NDArray[np.float32] = np.clip(values, 0.0, 1.0).astype(np.float32, copy=False)
    return clipped
