"""Predictions that say physics: what a hypothesis claims, its null, and the quantity that decides.

Each prediction names feature classes of the survey map (``tools/grounding/classes.py``)
and defines one **effect** θ of the sample's true signal, a function of class means (or
of a slope over features), with a threshold: the claim is "θ > 0" once written in the
prediction's own terms. ``tools/verdicts.py`` estimates θ from spectra with a confidence
interval; ``evals/truth.py`` computes θ on the twin's noise-free signal over every member
of the classes. The same definition serves both, so a verdict is scored on what it claims.

| kind | claim | effect θ (> 0 when the claim holds) |
|---|---|---|
| ``localized_at`` | the signal at ``at`` is at least ``min_ratio``× that ``versus`` (default: everywhere else) | μ_at − r·μ_versus |
| ``contrast`` | class ``a`` is ``min_ratio``× higher (or lower) than class ``b`` | μ_a − r·μ_b (higher) or μ_b − r·μ_a (lower) |
| ``shift`` | an energy (peak or edge onset) of ``b`` lies ``min_shift_eV`` above (or below) that of ``a`` | ±(E_b − E_a) − m |
| ``trend`` | the signal (or energy) over the features of ``over`` rises/falls with a structural covariate | ± Spearman ρ (features ranked by the covariate) |
| ``identity`` | the sites of ``at`` are ``species`` on ``host``: that defect model matches the survey image best at more than ``min_fraction`` of them | share − f |
| ``uniform`` | the mean signal of every listed class is within ``max_ratio`` of every other (energies: within ``max_shift_eV``) | log r − max |log μ_i/μ_j| (energies: m − max |E_i − E_j|) |

Intensity signals (band intensity, peak ratio) may be localized, contrasted, trended or
uniform; energy signals (peak position, edge onset) may be shifted, trended or uniform.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscope.tools.grounding.classes import ClassName
from autoscope.tools.ml.scalarizers import require_kind

ENERGY_SIGNALS = frozenset({"peak_position", "edge_onset"})
Elsewhere = Literal["elsewhere"]
Covariate = Literal["aspect_ratio", "size_nm", "length_nm", "width_nm", "distance_to_interface_nm"]
#: covariates measured per particle (the others per point)
PARTICLE_COVARIATES = frozenset({"aspect_ratio", "size_nm", "length_nm", "width_nm"})


class _Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=require_kind)

    def classes(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def claim(self, signal: str) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def null(self, signal: str) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def signal_kinds(self) -> frozenset[str] | None:
        """Signal kinds this prediction can be made of (None: any)."""
        return None


class LocalizedAt(_Prediction):
    kind: Literal["localized_at"] = "localized_at"
    at: ClassName = Field(description="the feature class (or group) where the signal concentrates")
    versus: ClassName | Elsewhere = Field("elsewhere", description="the reference: a class, or elsewhere")
    min_ratio: float = Field(2.0, gt=1.0, le=1000.0, description="how many times stronger at `at`")

    def classes(self) -> list[str]:
        return [self.at] + ([] if self.versus == "elsewhere" else [self.versus])

    def claim(self, signal: str) -> str:
        ref = "everywhere else" if self.versus == "elsewhere" else f"at {self.versus}"
        return f"{signal} at {self.at} is at least {self.min_ratio:g}× {ref}"

    def null(self, signal: str) -> str:
        ref = "everywhere else" if self.versus == "elsewhere" else f"at {self.versus}"
        return f"{signal} at {self.at} is less than {self.min_ratio:g}× {ref}"

    def signal_kinds(self) -> frozenset[str]:
        return frozenset({"band_intensity", "peak_ratio"})


class _TwoClasses(_Prediction):
    """A comparison of class ``b`` with class ``a``."""

    a: ClassName
    b: ClassName

    @model_validator(mode="after")
    def _distinct(self):
        if self.a == self.b:
            raise ValueError("a and b must be different classes")
        return self

    def classes(self) -> list[str]:
        return [self.a, self.b]


class Contrast(_TwoClasses):
    kind: Literal["contrast"] = "contrast"
    direction: Literal["higher", "lower"] = Field("higher", description="a relative to b")
    min_ratio: float = Field(1.5, gt=1.0, le=1000.0)

    def claim(self, signal: str) -> str:
        return f"{signal} at {self.a} is at least {self.min_ratio:g}× {self.direction} than at {self.b}"

    def null(self, signal: str) -> str:
        return f"{signal} at {self.a} is not {self.min_ratio:g}× {self.direction} than at {self.b}"

    def signal_kinds(self) -> frozenset[str]:
        return frozenset({"band_intensity", "peak_ratio"})


class Shift(_TwoClasses):
    kind: Literal["shift"] = "shift"
    direction: Literal["up", "down"] = Field("up", description="b's energy relative to a's")
    min_shift_eV: float = Field(0.5, gt=0.0, le=100.0)
    expected_eV: float | None = Field(
        None, description="a theory value of b − a (eV), checked beside the verdict"
    )

    def claim(self, signal: str) -> str:
        return f"{signal} at {self.b} lies at least {self.min_shift_eV:g} eV {'above' if self.direction == 'up' else 'below'} that at {self.a}"

    def null(self, signal: str) -> str:
        return f"{signal} at {self.b} is shifted by less than {self.min_shift_eV:g} eV {'up' if self.direction == 'up' else 'down'} from {self.a}"

    def signal_kinds(self) -> frozenset[str]:
        return ENERGY_SIGNALS


class Trend(_Prediction):
    kind: Literal["trend"] = "trend"
    over: ClassName = Field(
        description="the features measured: a key-point class (one value per particle) or an area"
    )
    covariate: Covariate
    sign: Literal["increasing", "decreasing"]
    law: Literal["none", "gans_rod_dipole"] = Field(
        "none",
        description="a named scaling law checked beside the verdict (Gans: rod dipole energy vs aspect ratio)",
    )

    def classes(self) -> list[str]:
        return [self.over]

    def claim(self, signal: str) -> str:
        return f"{signal} over {self.over} is {self.sign} with {self.covariate}"

    def null(self, signal: str) -> str:
        return f"{signal} over {self.over} is not {self.sign} with {self.covariate}"


class Uniform(_Prediction):
    kind: Literal["uniform"] = "uniform"
    over: list[ClassName] = Field(min_length=2, max_length=8, description="the classes compared")
    max_ratio: float = Field(
        1.5, gt=1.0, le=100.0, description="intensities: the largest ratio of class means"
    )
    max_shift_eV: float = Field(0.3, gt=0.0, le=100.0, description="energies: the largest difference")

    @model_validator(mode="after")
    def _distinct(self) -> Uniform:
        if len(set(self.over)) != len(self.over):
            raise ValueError("over: each class once")
        return self

    def classes(self) -> list[str]:
        return list(self.over)

    def claim(self, signal: str) -> str:
        return f"{signal} is the same (within {self.max_ratio:g}×, or {self.max_shift_eV:g} eV) over {', '.join(self.over)}"

    def null(self, signal: str) -> str:
        return f"{signal} differs by more than {self.max_ratio:g}× (or {self.max_shift_eV:g} eV) between some of {', '.join(self.over)}"


class Identity(_Prediction):
    """What the sites of a class are, judged on the survey image by defect-model ranking (theory
    in the loop): the model ``species`` on ``host`` must match the image best at most of them."""

    kind: Literal["identity"] = "identity"
    at: ClassName = Field(description="a lattice-site class, e.g. bright_site_brighter")
    species: str = Field(min_length=1, max_length=3, description="the substituent element, e.g. W")
    host: str = Field(min_length=1, max_length=3, description="the element it replaces, e.g. Mo")
    min_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="share of the sites the model must win")

    def classes(self) -> list[str]:
        return [self.at]

    def claim(self, signal: str) -> str:
        return (
            f"the {self.at} sites are {self.species} on {self.host}: the {self.species}_{self.host} model "
            f"matches the survey image best at more than {self.min_fraction:.0%} of them"
        )

    def null(self, signal: str) -> str:
        return f"at most {self.min_fraction:.0%} of the {self.at} sites are best matched by {self.species}_{self.host}"


Prediction = Annotated[
    Union[LocalizedAt, Contrast, Shift, Trend, Uniform, Identity],  # noqa: UP007 - a discriminated union
    Field(discriminator="kind"),
]


def kinds_for_signal(signal_kind: str) -> list[str]:
    """The prediction kinds that can judge a signal of ``signal_kind`` (for an error that names the fix)."""
    members = get_args(get_args(Prediction)[0])
    return [
        m.model_fields["kind"].default
        for m in members
        if (k := m.model_construct().signal_kinds()) is None or signal_kind in k
    ]


def effect(
    p: _Prediction, means: dict[str, float], *, energy: bool = False, trend_rho: float | None = None
) -> float:
    """The prediction's effect θ from population quantities: > 0 when the claim holds.

    ``means``: the mean signal of each class the prediction names (``"elsewhere"`` for the
    complement of ``localized_at``'s class); ``trend_rho``: Spearman's ρ of the signal
    against the covariate over the features (``trend`` only); ``energy``: the signal is an
    energy in eV (``uniform`` compares differences, not ratios). See the module table.
    """
    import math

    if isinstance(p, LocalizedAt):
        return means[p.at] - p.min_ratio * means[p.versus]
    if isinstance(p, Contrast):
        hi, lo = (p.a, p.b) if p.direction == "higher" else (p.b, p.a)
        return means[hi] - p.min_ratio * means[lo]
    if isinstance(p, Shift):
        d = means[p.b] - means[p.a]
        return (d if p.direction == "up" else -d) - p.min_shift_eV
    if isinstance(p, Trend):
        if trend_rho is None:
            raise ValueError("a trend's effect needs Spearman's rho over the features")
        return trend_rho if p.sign == "increasing" else -trend_rho
    if isinstance(p, Identity):
        return means[p.at] - p.min_fraction  # the mean of 1 (the model wins) / 0 over the sites
    if isinstance(p, Uniform):
        vals = [means[c] for c in p.over]
        if energy:
            return p.max_shift_eV - (max(vals) - min(vals))
        if min(vals) <= 0:
            return -math.inf  # a class without signal next to one with it is not uniform
        return math.log(p.max_ratio) - math.log(max(vals) / min(vals))
    raise TypeError(f"not a prediction: {p!r}")


__all__ = [
    "ENERGY_SIGNALS",
    "kinds_for_signal",
    "PARTICLE_COVARIATES",
    "Contrast",
    "Covariate",
    "Identity",
    "LocalizedAt",
    "Prediction",
    "Shift",
    "Trend",
    "Uniform",
    "effect",
]
