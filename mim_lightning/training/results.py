"""A run's results.json fields, from the outputs of its stages.

The spectral baseline is reported as a family: the top-r eigenvectors of the label-weighted
covariance with the centred (T(y) - mean T) and the uncentred (T(y)) preprocessing, each ranked by
|eigenvalue| (``magnitude``), algebraic value descending (``largest``) and ascending
(``smallest``). ``spectral_principal_cosines`` is the strongest member, the one with the largest
smallest principal cosine: an oracle choice (it uses the hidden subspace), so that the network is
compared with the best any of these estimators could do on the same data.
"""

from __future__ import annotations

from mim_lightning.config import Config

ORDERS = ("magnitude", "largest", "smallest")


def spectral_family(outputs: dict, k: int, centred: bool) -> dict[str, dict[str, list[float]]]:
    """Replica k's baseline cosines by preprocessing and ranking: {"centred" | "uncentred": {order:
    r cosines}}; "centred" only when stage 1 centres, "uncentred" unless baseline.uncentred = false
    turned it off. Empty when baseline.spectral = off."""
    family = {}
    if outputs["spectral"]:
        family["centred" if centred else "uncentred"] = {o: c[k] for o, c in outputs["spectral"].items()}
    if centred and outputs["spectral_uncentred"]:
        family["uncentred"] = {o: c[k] for o, c in outputs["spectral_uncentred"].items()}
    return family


def strongest(family: dict[str, dict[str, list[float]]]) -> tuple[str | None, list[float] | None]:
    """The member of ``family`` with the largest smallest cosine (ties: the larger mean, then the
    first in centred, uncentred x magnitude, largest, smallest order) as ("centred, largest", its
    cosines); (None, None) for an empty family."""
    members = [(f"{prep}, {order}", cosines) for prep, by_order in family.items()
               for order, cosines in by_order.items()]
    if not members:
        return None, None
    return max(members, key=lambda m: (min(m[1]), sum(m[1])))


def replica_results(cfg: Config, k: int, outputs: dict, stage2_loss, test_rel_mse, assumptions, timings) -> dict:
    """The results.json fields of replica k (spectral fields None when baseline.spectral = off)."""
    final = outputs["history"][-1]
    family = spectral_family(outputs, k, cfg.stage1.center)
    estimator, best = strongest(family)
    return {
        "principal_cosines": final["principal_cosines"][k],
        "subspace_mass": final["subspace_mass"][k],
        "test_rel_mse": float(test_rel_mse[k]),
        "spectral_principal_cosines": best,
        "spectral_estimator": estimator,
        "spectral_estimators": family,
        "stage1_unbounded_fraction": outputs["unbounded_fraction"][k],
        "direction_mass": outputs["direction_mass"][k],
        "stage2_loss": None if stage2_loss is None else float(stage2_loss[k]),
        "config": cfg.model_dump(),
        "assumptions": assumptions if assumptions is not None else [],
        "timings": timings,
        "history": [{"step": h["step"], "subspace_mass": h["subspace_mass"][k],
                     "principal_cosines": h["principal_cosines"][k]} for h in outputs["history"]],
    }
