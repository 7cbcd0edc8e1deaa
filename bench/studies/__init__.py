"""The supplement's studies as code: each writes a run directory or a study folder, data first.

* :mod:`.sweep` — one or more config fields of a method over lists of values, as variants of the
  method in one run directory (``bench sweep``; Tab. 2's ε_s sweep);
* :mod:`.sensitivity` — 3D shape change against 2D mask losses under latent jitter (``bench
  sensitivity``; the supplement's Fig. 1);
* :mod:`.generator_fid` — Full / Texture / Mesh FID of the generator itself (``bench eval-generator``;
  the supplement's Tab. 1).
"""
