"""A second golden-fixture set built from the shared one, as another official run could have made it.

The shared fixtures (``$MESHBENCH_FIXTURES``) come from one run of the official code with fixed seeds
and samples. A test that writes one of that run's facts into its code (the chosen candidate, an FID
value, which pose is which, how many samples there are, ...) passes on it but fails on a second run
made the same way. :func:`make_variant` copies the set and changes such facts while keeping every
file consistent with what the official code outputs for the changed inputs:

* ``e2e_inversion_trace.json``: the candidate noises (and their per-candidate init losses) are
  rotated, so the official argmin (``init_chosen_index``) moves; the rest of the trace depends only
  on the chosen noise and stays as it is.
* the three perturbed-generator samples (``gen512_perturbed_io.npz``,
  ``mesh_template_outputs_perturbed.npz``, ``render_outputs_perturbed.npz``) are re-ordered
  (sample 0 stays: ``fid12_views_uint8_sample0`` is its multiview render); the gradient-check arrays
  keep their sample, which now sits at another index.
* two render poses get a non-zero translation z (the official pose adds all three components; the
  renderer is orthographic and DIB-R's depth test is shift invariant, so only the stored posed
  vertices' z changes).
* ``fid_fixture.npz``: other activations (a subset of each set, the fake one perturbed), with the
  statistics and both FID values recomputed exactly as the official ``calculate_stats`` /
  ``calculate_frechet_distance`` (scipy ``sqrtm``) do, and the ConvMesh triangle storage redone.
* the fake CUB: its instances are stored in reverse order (annotation and SfM ``.mat`` rows, the
  per-index predicted masks, and the expected loader outputs, whose ``idx``/``inds`` follow).

Everything else is left byte-identical. Only numpy/scipy are used.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np

#: new order of the three generator/render samples: new[i] = old[SAMPLE_ORDER[i]] (sample 0 fixed)
SAMPLE_ORDER = (0, 2, 1)
#: translation z added to render poses (new indices); pose 0 keeps its z (0 in the shared set)
TRANSLATION_Z = {1: np.float32(0.07), 2: np.float32(-0.05)}
#: candidates are rotated by this many places
CANDIDATE_SHIFT = 1
FID_SEED = 2024

RENDER_PER_SAMPLE = ("image_hard", "mask_hard", "vtx_xy", "frontal_mask", "vtx_3d_posed_flipped", "image_soft",
                     "mask_soft", "pose_scale", "pose_translation", "pose_rotation")
TEMPLATE_PER_SAMPLE = ("mesh_map", "vertex_positions", "vertex_deltas_local_nonneg", "vertex_colors",
                       "face_normals", "vertex_positions_initA", "vertex_colors_initA")
IO_PER_SAMPLE = ("z", "class_ids", "texture", "mesh_map")
CUB = Path("fake_cub_root") / "datasets" / "cub"


def make_variant(src: Path, dst: Path) -> dict:
    """Copy the fixture folder ``src`` to ``dst`` (must not exist) and change its seed-dependent facts.

    Returns:
        A summary of what changed (old/new values), for tests that check the variant really differs.
    """
    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    for root, dirs, files in os.walk(dst):  # the shared folder is read-only; the copy must not be
        for name in dirs + files:
            p = Path(root) / name
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    dst.chmod(dst.stat().st_mode | stat.S_IWUSR)
    summary = {}
    summary["e2e"] = _rotate_candidates(dst)
    summary["samples"] = _reorder_samples(dst)
    summary["translation_z"] = _shift_translation_z(dst)
    summary["fid"] = _new_fid_activations(dst)
    summary["cub"] = _reverse_cub(dst)
    return summary


# ------------------------------------------------------------------------------------------ helpers


def _load_npz(path: Path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _save_npz(path: Path, arrays: dict) -> None:
    path.unlink()
    with open(path, "wb") as fh:  # keep the name (np.savez_compressed would append .npz to a str)
        np.savez_compressed(fh, **arrays)


def _write_text(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


# ------------------------------------------------------------------------------------------ e2e


def _rotate_candidates(dst: Path) -> dict:
    path = dst / "e2e_inversion_trace.json"
    trace = json.loads(path.read_text())
    n = len(trace["init_candidate_noises"])
    order = np.roll(np.arange(n), CANDIDATE_SHIFT)  # new[i] = old[order[i]]
    old = trace["init_chosen_index"]
    losses = [c["loss"] for c in trace["init_losses"]]
    assert int(np.argmin(losses)) == old
    trace["init_candidate_noises"] = [trace["init_candidate_noises"][j] for j in order]
    trace["init_losses"] = [trace["init_losses"][j] for j in order]
    new = int(np.argmin([c["loss"] for c in trace["init_losses"]]))  # the official choice: argmin
    assert trace["init_candidate_noises"][new] == trace["init_chosen_z"][0]
    trace["init_chosen_index"] = new
    _write_text(path, json.dumps(trace, indent=1))
    return {"chosen_index": (old, new)}


# ------------------------------------------------------------------------------------------ samples


def _permute(arrays: dict, keys, order) -> None:
    for k in keys:
        arrays[k] = arrays[k][list(order)]


def _reorder_samples(dst: Path) -> dict:
    order = list(SAMPLE_ORDER)
    io = _load_npz(dst / "gen512_perturbed_io.npz")
    _permute(io, IO_PER_SAMPLE, order)
    _save_npz(dst / "gen512_perturbed_io.npz", io)
    tpl = _load_npz(dst / "mesh_template_outputs_perturbed.npz")
    _permute(tpl, TEMPLATE_PER_SAMPLE, order)  # loss_flat is a batch mean: unchanged
    _save_npz(dst / "mesh_template_outputs_perturbed.npz", tpl)
    r = _load_npz(dst / "render_outputs_perturbed.npz")
    old_grad = _grad_sample(r)
    _permute(r, RENDER_PER_SAMPLE, order)
    new_grad = _grad_sample(r)
    _save_npz(dst / "render_outputs_perturbed.npz", r)
    return {"order": order, "gradient_sample": (old_grad, new_grad)}


def _grad_sample(r: dict) -> int:
    hits = [b for b in range(r["vtx_3d_posed_flipped"].shape[0])
            if np.array_equal(r["vtx_3d_posed_flipped"][b], r["grad_vtx_input"][0])]
    assert len(hits) == 1, hits
    return hits[0]


def _shift_translation_z(dst: Path) -> dict:
    """Posed = qrot(q, s·V) + t, flipped by (1,-1,-1): a translation z moves only the stored z."""
    path = dst / "render_outputs_perturbed.npz"
    r = _load_npz(path)
    grad = _grad_sample(r)
    for b, tz in TRANSLATION_Z.items():
        # flipped z = -(P_z + tz): from a zero translation z exactly (-P_z) - tz in float32
        r["pose_translation"][b, 2] += tz
        r["vtx_3d_posed_flipped"][b, :, 2] = (r["vtx_3d_posed_flipped"][b, :, 2] - tz).astype(np.float32)
        if b == grad:
            r["grad_vtx_input"][0] = r["vtx_3d_posed_flipped"][b]
    _save_npz(path, r)
    return {int(b): float(tz) for b, tz in TRANSLATION_Z.items()}


# ------------------------------------------------------------------------------------------ FID


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6) -> float:
    """The official (pytorch-fid / ConvMesh) ``calculate_frechet_distance``."""
    import scipy.linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if isinstance(covmean, tuple):
        covmean = covmean[0]
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def calculate_stats(act: np.ndarray):
    """The official ``calculate_stats``: mean (in the activations' dtype) and ``np.cov`` (float64)."""
    return np.mean(act, axis=0), np.cov(act, rowvar=False)


def _new_fid_activations(dst: Path) -> dict:
    path = dst / "fid_fixture.npz"
    d = _load_npz(path)
    rng = np.random.default_rng(FID_SEED)
    fake = d["act_fake"][rng.permutation(len(d["act_fake"]))[:170]]
    fake = (fake + 0.3 * rng.standard_normal(fake.shape)).astype(d["act_fake"].dtype)
    real = d["act_real"][rng.permutation(len(d["act_real"]))[:260]]
    out = {"act_fake": fake, "act_real": real}
    out["mu_fake"], out["sigma_fake"] = calculate_stats(fake)
    out["mu_real"], out["sigma_real"] = calculate_stats(real)
    tril = np.tril(out["sigma_real"]).astype(np.float32)
    out["stats_s_tril_float32"] = tril
    out["sigma_real_reconstructed"] = tril + np.triu(tril.T, 1)
    out["fid"] = np.float64(frechet_distance(out["mu_fake"], out["sigma_fake"], out["mu_real"], out["sigma_real"]))
    out["fid_from_tril_stats"] = np.float64(frechet_distance(out["mu_fake"], out["sigma_fake"], out["mu_real"],
                                                             out["sigma_real_reconstructed"]))
    assert set(out) == set(d)
    for k, v in out.items():
        assert v.dtype == d[k].dtype, k
    _save_npz(path, {k: out[k] for k in d})
    return {"fid": (float(d["fid"]), float(out["fid"])), "num_real": (len(d["act_real"]), len(real)),
            "num_fake": (len(d["act_fake"]), len(fake))}


# ------------------------------------------------------------------------------------------ CUB


def _reverse_mat(path: Path, variable: str) -> int:
    import scipy.io

    data = scipy.io.loadmat(str(path))  # struct_as_record=True, squeeze_me=False: round-trips
    arr = data[variable]
    assert arr.ndim == 2 and arr.shape[0] == 1, arr.shape
    path.unlink()
    scipy.io.savemat(str(path), {variable: arr[:, ::-1].copy()})
    return arr.shape[1]


def _reverse_cub(dst: Path) -> dict:
    cub = dst / CUB
    n = _reverse_mat(cub / "cache" / "data" / "test_cub_cleaned.mat", "images")
    assert _reverse_mat(cub / "cache" / "sfm" / "anno_test.mat", "sfm_anno") == n
    masks = cub / "predicted_mask"
    for i in range(n):
        (masks / f"{i}.npy").rename(masks / f"tmp{i}.npy")
    for i in range(n):
        (masks / f"tmp{i}.npy").rename(masks / f"{n - 1 - i}.npy")
    path = dst / "fake_cub_expected_samples.npz"
    _save_npz(path, _reverse_prefixed(_load_npz(path), n, index_keys=("idx", "inds")))
    meta_path = dst / "fake_cub_expected_samples_meta.json"
    _write_text(meta_path, json.dumps(_reverse_prefixed(json.loads(meta_path.read_text()), n), indent=1))
    return {"order": list(range(n))[::-1], "num_instances": n}


def _reverse_prefixed(items: dict, n: int, index_keys=()) -> dict:
    """``s{i}_<name>`` entries re-numbered ``s{n-1-i}_<name>`` (in the same order); ``index_keys``
    (the loader's own index of the batch) are set to the new index."""
    out = {}
    for i in range(n):
        j = n - 1 - i
        for key, value in items.items():
            if key.startswith(f"s{j}_"):
                name = key[len(f"s{j}_"):]
                out[f"s{i}_{name}"] = np.full_like(value, i) if name in index_keys else value
    assert set(out) == set(items), set(items) ^ set(out)
    return out
