"""File formats the project owns: MRC read/write with atomic writes, RELION STAR <-> hits, CTF and optics."""
