import math

import numpy as np
import pytest

from napari_2dtm.core.ctf import CTFParams, ctf_2d, read_ctffind, wavelength_a
from napari_2dtm.errors import InputError


def test_wavelength_300kv():
    assert wavelength_a(300) == pytest.approx(0.019687, abs=2e-6)
    assert wavelength_a(200) == pytest.approx(0.025079, abs=2e-6)


def test_first_zero_matches_analytic():
    # chi = pi*lam*df*k^2 + w - pi/2*lam^3*Cs*k^4 ; first zero of -sin(chi) is chi = pi.
    p = CTFParams(defocus1_a=15000, cs_mm=0.0, amplitude_contrast=0.0)
    n, px = 2048, 1.0
    c = ctf_2d(p, (n, n), px)[0]  # ky = 0 row
    k = np.fft.rfftfreq(n, px)
    k0 = math.sqrt(1.0 / (wavelength_a(300) * 15000))
    i = np.argmax(np.diff(np.sign(c[1:])) != 0) + 1
    assert abs(k[i] - k0) < 2 / (n * px)
    assert c[1] < 0  # under-focus: negative low-frequency contrast


def test_astigmatism_axes():
    p = CTFParams(defocus1_a=20000, defocus2_a=10000, astigmatism_angle_deg=0, cs_mm=0,
                  amplitude_contrast=0)
    c = ctf_2d(p, (512, 512), 1.0)
    lam = wavelength_a(300)
    k = np.fft.rfftfreq(512)[20]
    assert c[0, 20] == pytest.approx(-math.sin(math.pi * lam * 20000 * k * k), abs=1e-5)
    assert c[20, 0] == pytest.approx(-math.sin(math.pi * lam * 10000 * k * k), abs=1e-5)


def test_read_ctffind(tmp_path):
    f = tmp_path / "diag.txt"
    f.write_text(
        "# Output from CTFFind version 4.1.14\n"
        "# Pixel size: 1.060 Angstroms ; acceleration voltage: 300.0 keV ; spherical aberration: 2.70 mm ; amplitude contrast: 0.10\n"
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing\n"
        "1.000000 12345.6 12000.1 45.3 0.000000 0.0912 3.40\n"
    )
    p, px = read_ctffind(f)
    assert (p.defocus1_a, p.defocus2_a, p.astigmatism_angle_deg) == (12345.6, 12000.1, 45.3)
    assert p.amplitude_contrast == 0.10 and px == 1.06


def test_read_ctffind_rejects_junk(tmp_path):
    f = tmp_path / "junk.txt"
    f.write_text("hello world\n")
    with pytest.raises(InputError, match="junk.txt"):
        read_ctffind(f)
