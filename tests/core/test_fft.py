"""The FFT layer: every installed library against pocketfft, the engine on each, and a
resume that remakes the recorded FFTs.

Libraries that are not installed are skipped, except pocketfft, which is always tested
(forced with NAPARI_2DTM_FFT), so the suite covers the plain install too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.fft as sfft

from napari_2dtm import CTFParams, Search, SearchConfig
from napari_2dtm.core import fft
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.search._correlate import CpuCorrelator
from napari_2dtm.search.checkpoint import read_state

HERE = fft.installed()
FRAMES = [(96, 128), (90, 100)]  # a power of two, and rows whose spectra are 16-byte aligned


def _spectrum(rng, frame):
    hs, ws = frame
    return (rng.standard_normal((hs, ws // 2 + 1))
            + 1j * rng.standard_normal((hs, ws // 2 + 1))).astype(np.complex64)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("library", fft.LIBRARIES)
@pytest.mark.parametrize("frame", FRAMES)
def test_each_library_transforms_as_pocketfft(library, frame):
    if library not in HERE:
        pytest.skip(f"{library} is not installed")
    rng = np.random.default_rng(0)
    f = fft.make(library, frame, 2)
    x = _spectrum(rng, frame)
    ref = sfft.irfft2(x.astype(np.complex128), s=frame)  # double precision oracle
    spec = f.empty(x.shape, np.complex64)
    spec[...] = x
    out = f.empty(frame, np.float32)
    f.inverse(spec, out)
    assert _rel(out * f.inverse_scale, ref) < 1e-5
    # an unaligned, odd place in memory (a caller's slice) gives the same map
    raw = np.empty(x.size + 3, np.complex64)[3:].reshape(x.shape)
    raw[...] = x
    out2 = np.empty(frame[0] * frame[1] + 1, np.float32)[1:].reshape(frame)
    f.inverse(raw, out2)
    np.testing.assert_array_equal(out2, out)
    spec[...] = x
    f.columns(spec)
    assert _rel(spec, sfft.fft(x.astype(np.complex128), axis=0)) < 1e-5


def test_pocketfft_inverse_is_the_two_pass_scipy_numpy_transform():
    # What the engine computed before the FFT layer: column ifft (scipy) then row irfft
    # (numpy), bit for bit, so a plain install's maps do not change.
    rng = np.random.default_rng(1)
    frame = (90, 100)
    x = _spectrum(rng, frame)
    f = fft.make("pocketfft", frame, 2)
    out = np.empty(frame, np.float32)
    f.inverse(x.copy(), out)
    want = np.fft.irfft(sfft.ifft(x, axis=0, workers=1), n=frame[1], axis=1)
    np.testing.assert_array_equal(out, want)
    assert f.inverse_scale == 1.0


@pytest.mark.parametrize("library", HERE)
def test_correlator_maps_match_pocketfft(library):
    rng = np.random.default_rng(2)
    frame, h = (96, 128), 24
    runner = lambda fn, n: [fn(i) for i in range(n)]  # noqa: E731
    img = _spectrum(rng, frame)
    filters = rng.random((3, frame[0], frame[1] // 2 + 1)).astype(np.float32)
    wts = np.full(frame[1] // 2 + 1, 2, np.float32)
    wts[[0, -1]] = 1
    proj = rng.standard_normal((4, h, h)).astype(np.float32)
    fidx = np.tile(np.arange(3), 4)
    pidx = np.repeat(np.arange(4), 3)
    got, ref = [], []
    for lib, dst in ((library, got), ("pocketfft", ref)):
        c = CpuCorrelator(frame, 2, runner, fft.make(lib, frame, 2))
        pft = c.padded_spectra(proj)
        ccs, scales = c.correlate(img, filters, wts, pft, fidx, pidx)
        dst.append(ccs * scales[:, None, None])
    assert _rel(got[0], ref[0]) < 1e-5


def test_choice_is_timed_once_and_recorded(monkeypatch):
    monkeypatch.delenv(fft.ENV_VAR, raising=False)
    a = fft.frame_fft((64, 80), 2)
    assert a is fft.frame_fft((64, 80), 2)  # once per process and shape
    assert a.name in HERE and set(a.floors_s) == set(HERE)
    assert a.floor_s == min(a.floors_s.values()) > 0
    rec = a.record()
    assert rec["library"] == a.name and rec["floor_ms_per_map"] > 0
    assert a.name in a.describe()


def test_choice_is_remembered_by_the_machine_for_later_processes(monkeypatch, tmp_path):
    # A later process (a resume, a dask shard) must not re-time and land on another
    # library: near-equal timings flip, and libraries round differently.
    monkeypatch.delenv(fft.ENV_VAR, raising=False)
    monkeypatch.setenv("NAPARI_2DTM_CACHE", str(tmp_path))
    frame = (56, 60)
    first = fft.frame_fft(frame, 2)
    assert first.chosen_by == "timing"
    memo = list((tmp_path / "fftw").glob("choice-*56x60.json"))
    assert len(memo) == 1
    monkeypatch.setattr(fft, "_CHOSEN", {})  # as a new process
    # Whatever the timing would say now, the remembered library is used: write another
    # installed library into the memory and it is the one taken.
    other = [n for n in HERE if n != first.name] or [first.name]
    memo[0].write_text(memo[0].read_text().replace(f'"library": "{first.name}"',
                                                   f'"library": "{other[0]}"'))
    again = fft.frame_fft(frame, 1)  # other threads: the same memory
    assert again.chosen_by == "remembered" and again.name == other[0]
    assert set(again.floors_s) == set(first.floors_s)
    # a memory naming a library that is not installed (or garbage) is timed afresh
    monkeypatch.setattr(fft, "_CHOSEN", {})
    memo[0].write_text('{"library": "fftpack", "floors_ms": {}}')
    assert fft.frame_fft(frame, 2).chosen_by == "timing"
    monkeypatch.setattr(fft, "_CHOSEN", {})
    monkeypatch.setenv("NAPARI_2DTM_CACHE", "off")  # no cache: timed in every process
    assert fft.frame_fft(frame, 2).chosen_by == "timing"


def test_env_var_forces_a_library_and_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv(fft.ENV_VAR, "pocketfft")
    assert fft.frame_fft((64, 72), 2).name == "pocketfft"
    monkeypatch.setenv(fft.ENV_VAR, "cuFFT")
    with pytest.raises(InputError, match=fft.ENV_VAR):
        fft.frame_fft((64, 72), 2)


def test_recorded_library_missing_or_unknown_is_refused():
    with pytest.raises(InputError, match="unknown FFT library"):
        fft.frame_fft_from_record((64, 64), 2, {"library": "fftpack"})
    for lib in set(fft.LIBRARIES) - set(HERE):
        with pytest.raises(InputError, match="not installed"):
            fft.frame_fft_from_record((64, 64), 2, {"library": lib})
    # a checkpoint from before libraries were recorded was made with pocketfft
    assert fft.frame_fft_from_record((64, 64), 2, None).name == "pocketfft"


@pytest.mark.skipif("fftw" not in HERE, reason="pyFFTW is not installed")
def test_fftw_wisdom_goes_to_the_cache_and_remakes_the_same_plans(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_2DTM_CACHE", str(tmp_path))
    frame = (72, 84)
    f = fft.make("fftw", frame, 2)
    assert list((tmp_path / "fftw").glob("*.wisdom"))
    rec = f.record(wisdom=True)
    g = fft.frame_fft_from_record(frame, 2, rec)
    assert g.chosen_by == "checkpoint"
    x = _spectrum(np.random.default_rng(3), frame)
    a, b = np.empty(frame, np.float32), np.empty(frame, np.float32)
    f.inverse(x.copy(), a)
    g.inverse(x.copy(), b)
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------- the engine
def _search_case():
    rng = np.random.default_rng(4)
    img = rng.standard_normal((80, 88)).astype(np.float32)
    n = 16
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    vol = np.exp(-(x * x + 2 * y * y + 3 * z * z) / 8.0).astype(np.float32)
    cfg = SearchConfig(ctf=CTFParams(defocus1_a=8000), out_of_plane_step_deg=30,
                       in_plane_step_deg=30, defocus_range_a=200, defocus_step_a=200,
                       device="cpu", batch_size=4, checkpoint_interval_s=0)
    return img, vol, cfg


@pytest.mark.parametrize("library", HERE)
def test_search_on_each_library_matches_pocketfft_and_records_it(library, monkeypatch):
    img, vol, cfg = _search_case()
    res = {}
    for lib in (library, "pocketfft"):
        monkeypatch.setenv(fft.ENV_VAR, lib)
        s = Search(img, 4.0, vol, cfg)
        for _ in s.run():
            pass
        res[lib] = s.result
    meta = res[library].metadata["fft"]
    assert meta["library"] == library and meta["floor_ms_per_map"] > 0
    assert "wisdom" not in meta
    for k in ("mip", "mean", "std"):
        a, b = res[library].maps[k], res["pocketfft"].maps[k]
        assert _rel(a, b) < 1e-5, k


@pytest.mark.parametrize("library", HERE)
def test_resume_uses_the_recorded_library_bit_identically(library, monkeypatch, tmp_path):
    img, vol, cfg = _search_case()
    monkeypatch.setenv(fft.ENV_VAR, library)
    whole = Search(img, 4.0, vol, cfg)
    for _ in whole.run():
        pass
    ckpt = tmp_path / "c.npz"
    part = Search(img, 4.0, vol, dataclasses.replace(cfg, progress_interval_s=0), checkpoint=ckpt)
    with pytest.raises(Cancelled):
        for _ in part.run():  # a snapshot after the first batch: stop there
            part.cancel()
    state = read_state(ckpt)
    assert 0 < state["n_cc"] < whole.n_cc_total
    assert state["info"]["fft"]["library"] == library
    # resumed with another library asked for: the checkpoint's wins
    other = "pocketfft" if library != "pocketfft" else HERE[0]
    monkeypatch.setenv(fft.ENV_VAR, other)
    resumed = Search.resume(ckpt, image=img)
    assert resumed.frame_fft().name == library
    for _ in resumed.run():
        pass
    for k in ("mip", "mean", "std", "phi"):
        np.testing.assert_array_equal(resumed.result.maps[k], whole.result.maps[k], err_msg=k)
