"""napari-2dtm: high-resolution 2D template matching for cryo-EM.

Public API (the napari widgets and the CLI use exactly this)::

    from napari_2dtm import CTFParams, SearchConfig, Search, search, read_micrograph
    image, px = read_micrograph("mic.mrc")
    res = search(image, px, "template.mrc", SearchConfig(ctf=CTFParams(defocus1_a=12000)))
    write_results(res, "results/mic")
"""

__version__ = "0.1.0"

from napari_2dtm.core.backend import gpu_info
from napari_2dtm.core.ctf import CTFParams, read_ctffind
from napari_2dtm.errors import GPUUnavailableError, InputError, SearchCancelled
from napari_2dtm.hits.refine import refine_hits
from napari_2dtm.io.mrc import read_map, read_micrograph, write_mrc
from napari_2dtm.reconstruct.bias import template_bias
from napari_2dtm.reconstruct.particles import (
    ParticleSet,
    extract_particles,
    read_particles,
    write_particles,
)
from napari_2dtm.reconstruct.reconstructor import Reconstruction, reconstruct
from napari_2dtm.search.checkpoint import (
    SearchPartial,
    load_partial,
    merge_partials,
    save_partial,
    shard_ranges,
)
from napari_2dtm.search.config import SearchConfig
from napari_2dtm.search.detect import (
    expected_false_positives,
    extract_hits,
    false_alarm_threshold,
    find_peaks,
)
from napari_2dtm.search.engine import Search, SearchProgress, SearchResult
from napari_2dtm.search.fast import search
from napari_2dtm.search.pvalue import (
    PValueFit,
    add_neg_log_p,
    expected_false_positives_pvalue,
    neg_log_p,
    neg_log_p_map,
    pvalue_threshold,
)
from napari_2dtm.search.results import read_results, write_results
from napari_2dtm.templates.load import load_template
from napari_2dtm.templates.template import Template

__all__ = [
    "CTFParams", "SearchConfig", "Search", "SearchProgress", "SearchResult", "search",
    "read_micrograph", "read_map", "write_mrc", "load_template", "Template", "read_ctffind",
    "write_results", "read_results", "extract_hits", "find_peaks", "false_alarm_threshold",
    "expected_false_positives", "gpu_info", "InputError", "GPUUnavailableError",
    "SearchCancelled", "__version__",
    "neg_log_p", "neg_log_p_map", "add_neg_log_p", "pvalue_threshold",
    "expected_false_positives_pvalue", "PValueFit",
    "SearchPartial", "merge_partials", "load_partial", "save_partial", "shard_ranges",
    "refine_hits", "extract_particles", "write_particles", "read_particles", "ParticleSet",
    "reconstruct", "Reconstruction", "template_bias",
]
