"""Small-complex reconstruction: particle extraction, direct Fourier insertion, FSC and template bias."""
