"""Grounding: a typed structure and spectrum map of the survey (``SurveyMap``).

``build_survey_map(image, spectra)`` segments the overview into what a scientist would
name — particles with their shape, size, aspect ratio, orientation, tips and corners; the
columns of an atomic lattice with their intensity class and candidate defect sites; an
interface with a distance map; flakes stacked on a film, counted by HAADF steps — and summarises the survey spectra (peaks, edges and the
class each was taken on). It reads the image and spectra only, never the twin's oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoscope.instruments.records import ImageRecord, SpectrumRecord
from autoscope.tools.grounding.classes import FEATURE_CLASSES, FeatureClass, members
from autoscope.tools.grounding.model import SurveyMap, SurveySpectrum


def build_survey_map(image: ImageRecord, spectra: Sequence[tuple[str, SpectrumRecord]] = ()) -> SurveyMap:
    """The map of one survey: image features first, then each spectrum on its class."""
    from autoscope.tools.grounding.flakes import find_flakes
    from autoscope.tools.grounding.interface import find_interface
    from autoscope.tools.grounding.lattice import find_lattice
    from autoscope.tools.grounding.particles import find_particles

    lattice = find_lattice(image)
    interface = find_interface(image)
    # flat flakes stacked on a film (a ladder of equal HAADF steps) cover too much of the field
    # for the particle segmentation, which takes the commonest level for the support
    flakes = find_flakes(image) if lattice is None and interface is None else None
    particles = (
        [] if lattice is not None or interface is not None or flakes is not None else find_particles(image)
    )
    smap = SurveyMap(
        fov_nm=image.fov_nm,
        center_nm=(image.center_x_nm, image.center_y_nm),
        pixels=image.pixels,
        particles=particles,
        lattice=lattice,
        interface=interface,
        flakes=flakes,
    )
    return smap.model_copy(update={"spectra": [describe_spectrum(smap, sid, rec) for sid, rec in spectra]})


def describe_spectrum(smap: SurveyMap, step_id: str, record: SpectrumRecord) -> SurveySpectrum:
    from autoscope.tools.grounding.spectra import find_edges, find_peaks

    return SurveySpectrum(
        step_id=step_id,
        x_nm=record.x_nm,
        y_nm=record.y_nm,
        cls=smap.class_of_point(record.x_nm, record.y_nm),
        peaks=find_peaks(record),
        edges=find_edges(record),
    )


__all__ = [
    "FEATURE_CLASSES",
    "FeatureClass",
    "SurveyMap",
    "build_survey_map",
    "describe_spectrum",
    "members",
    "population_grid",
]


def population_grid(image: ImageRecord):
    """The grid of points that stands for the area of each class (about 128 × 128 over the field).

    A class mean "over rod tips" is the mean over the grid points in the rod-tip area; the
    audit samples these points and the ground truth averages over them.
    """
    from autoscope.tools.ml.descriptors import candidate_grid

    return candidate_grid(image, max(1, image.pixels // 128), 1)
