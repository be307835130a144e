"""Stage 6: the tables (Markdown), the claims and the figure (one PNG), pooled over every
replicate of every base model, each cell with its 95 % interval.

The input is stage 5's summary per *cell* — one (base seed, replicate) pair: a concept trained
with one seed, sampled from that replicate's noise — holding one value per generated image
(:mod:`toyworld.measure`). Rates (recognised, prompt alignment, composition, the quality gate)
get Wilson intervals over all their images; similarities get the two-stage bootstrap of
:mod:`toyworld.stats` (cells, then images within cells); differences between two settings are
bootstrapped paired, image by image, in the same way.

A claim is *reproduced* only where its difference's interval excludes zero in the paper's
direction; where the paper expects no difference (locked keys cost no fidelity), the interval
is reported as consistent with none or not. Otherwise it is *not resolved at this sample size*,
and the claims table gives the smallest effect the run could have detected
(:func:`toyworld.stats.detectable`). Each claim is evaluated for every base model alone and for
all pooled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from .measure import ALIGNMENT
from .stats import Estimate, bootstrap, detectable, wilson

__all__ = ["Claim", "Pool", "report"]

ROWS = {
    "training_images": "training images among themselves",
    "new_drawings": "new drawings of the object (ceiling)",
    "superclass": "base model, superclass word",
    "locked": "Perfusion, keys locked (paper)",
    "learned_keys": "Perfusion, keys learned (ablation)",
}
VARIANT_NAMES = {"locked": "keys locked", "learned_keys": "keys learned"}
#: One cell's summary → one value per image.
Getter = Callable[[dict[str, Any]], Sequence[float]]
Cell = tuple[int, int]


def _changes() -> list[str]:
    return [f"{attribute}:{value}" for attribute, value in ALIGNMENT]


def _point(summary: dict[str, Any], novel: str, variant: str, beta: float) -> dict[str, Any]:
    """The β sweep's point of ``variant`` at ``beta``."""
    for point in summary["sweep"][novel][variant]:
        if point["beta"] == beta:
            return point
    raise KeyError(f"no β = {beta} in the sweep of {novel} ({variant})")


def _aligned(entry: dict[str, Sequence[float]]) -> list[float]:
    """Every image of every prompt change: 1 where the attribute asked for was read."""
    return [value for change in _changes() for value in entry[change]]


class Pool:
    """The cells' per-image values, pooled: rates (Wilson), means (bootstrap), and paired
    differences (bootstrap), each over all base seeds or over one."""

    def __init__(self, measured: dict[Cell, dict[str, Any]], resamples: int) -> None:
        self.measured = measured
        self.resamples = resamples
        self.seeds = sorted({seed for seed, _ in measured})

    def clusters(self, get: Getter, seed: int | None = None) -> list[np.ndarray]:
        """One array per cell (of base seed ``seed``, or of all)."""
        return [
            np.asarray(get(summary), dtype=np.float64)
            for (s, _), summary in sorted(self.measured.items())
            if seed is None or s == seed
        ]

    def rate(self, get: Getter, seed: int | None = None) -> Estimate:
        """The share of 1s over every image of the cells, with its Wilson interval."""
        values = np.concatenate(self.clusters(get, seed))
        return wilson(int(values.sum()), int(values.size))

    def mean(self, get: Getter, seed: int | None = None) -> Estimate:
        """The mean over every image of the cells, with its two-stage bootstrap interval."""
        return bootstrap(self.clusters(get, seed), self.resamples)

    def difference(self, first: Getter, second: Getter, seed: int | None = None) -> Estimate:
        """The mean of ``first − second``, paired image by image within each cell, with its
        two-stage bootstrap interval."""
        pairs = zip(self.clusters(first, seed), self.clusters(second, seed), strict=True)
        differences = []
        for a, b in pairs:
            if a.shape != b.shape:
                raise ValueError(f"unpaired values: {a.shape} and {b.shape}")
            differences.append(a - b)
        return bootstrap(differences, self.resamples)


@dataclass(frozen=True)
class Claim:
    """A claim of the paper as a difference between two settings: ``first − second`` (per
    image) is expected to be positive (``expected`` = 1) or zero (``expected`` = 0)."""

    name: str
    measure: str
    first: Getter
    second: Getter
    expected: int = 1


def _verdict(estimate: Estimate, expected: int) -> str:
    if expected == 0:
        if not estimate.excludes(0.0):
            return "consistent with no difference"
        return "differs (" + ("higher" if estimate.low > 0 else "lower") + ")"
    if estimate.low > 0:
        return "reproduced"
    if estimate.high < 0:
        return "reversed"
    return "not resolved at this sample size"


def _held_out_seeds(claims: list[tuple[Claim, dict[str, Any]]]) -> list[str]:
    """The held-out base seeds the evaluated claims were checked on, in order (as strings)."""
    return sorted(claims[0][1].get("replication", {}), key=int) if claims else []


def _conclusion(found: dict[str, Any]) -> str:
    """What the README may say about a claim: a definite pooled verdict that every held-out
    base model lands inside (``holds``), one that some does not (``did not replicate``), a
    definite verdict with no held-out base model to check it (``not checked``), or none
    (``not resolved``)."""
    if found["verdict"] == "not resolved at this sample size":
        return "not resolved"
    replication = found.get("replication")
    if not replication:
        return f"{found['verdict']}, not checked on a held-out base model"
    if all(entry["inside"] for entry in replication.values()):
        return f"{found['verdict']}, holds on the held-out base model"
    return f"{found['verdict']} — did not replicate"


def _claims(novels: Sequence[str], beta: float, betas: Sequence[float]) -> list[Claim]:
    """The paper's claims, as measured here."""
    claims: list[Claim] = []
    low, high = min(betas), max(betas)
    for n in novels:

        def fidelity(row: str, what: str, n: str = n) -> Getter:
            return lambda s: s["fidelity"][n][row][what]

        def alignment(row: str, n: str = n) -> Getter:
            return lambda s: _aligned(s["alignment"][n][row])

        claims += [
            Claim(
                f"{n}: the concept is closer to its training images than the superclass word",
                "similarity, locked − superclass",
                fidelity("locked", "similarity"),
                fidelity("superclass", "similarity"),
            ),
            Claim(
                f"{n}: the concept is recognised as the object more often than the superclass",
                "recognised, locked − superclass",
                fidelity("locked", "recognised"),
                fidelity("superclass", "recognised"),
            ),
            Claim(
                f"{n}: key locking keeps prompt alignment better than learned keys",
                "alignment, locked − learned",
                alignment("locked"),
                alignment("learned_keys"),
            ),
            Claim(
                f"{n}: key locking costs no fidelity against learned keys",
                "similarity, locked − learned",
                fidelity("locked", "similarity"),
                fidelity("learned_keys", "similarity"),
                expected=0,
            ),
        ]
    if low != high:

        def sweep(beta: float, what: str) -> Getter:
            def get(s: dict[str, Any]) -> list[float]:
                values: list[float] = []
                for n in novels:
                    point = _point(s, n, "locked", beta)
                    if what == "alignment":
                        values += _aligned(point["alignment"])
                    else:
                        values += point["fidelity_edited"]["similarity"]
                return values

            return get

        claims += [
            Claim(
                f"β trade-off (keys locked, both concepts): a closed gate (β = {high:g}) aligns "
                f"better than an open one (β = {low:g})",
                f"alignment, β {high:g} − β {low:g}",
                sweep(high, "alignment"),
                sweep(low, "alignment"),
            ),
            Claim(
                f"β trade-off (keys locked, both concepts): an open gate (β = {low:g}) is more "
                f"faithful on the edited prompts than a closed one (β = {high:g})",
                f"similarity (edited), β {low:g} − β {high:g}",
                sweep(low, "fidelity"),
                sweep(high, "fidelity"),
            ),
        ]
    claims.append(
        Claim(
            "composition: both concepts in one prompt are found together more often than the "
            "two superclass words meet the same test",
            "both found, locked − superclass",
            lambda s: s["composition"]["locked"]["both"],
            lambda s: s["composition"]["superclass"]["both"],
        )
    )
    return claims


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _gate_table(gates: dict[int, dict[str, Any]], pooled: Sequence[int]) -> str:
    header = ["base seed", "pretraining steps", "final loss"]
    header += [f"{objects}: {w}" for objects in ("single", "pairs") for w in ("shape", "colour")]
    header += ["background"]
    rows = []
    for seed, gate in sorted(gates.items()):
        rates, counted = gate["held_out_read_rate"], gate["objects_read"]
        label = str(seed) if seed in pooled else f"{seed} (held out)"
        row = [label, str(gate.get("steps", "")), f"{gate.get('final_loss', float('nan')):.3f}"]
        for objects in ("single", "pairs"):
            for what in ("shape", "colour"):
                n = counted[objects]
                row.append(wilson(round(rates[objects][what] * n), n).cell())
        n = counted["single"]
        row.append(wilson(round(rates["single"]["background"] * n), n).cell())
        rows.append(row)
    return _table(header, rows)


def _tables(
    pool: Pool,
    novels: list[str],
    gates: dict[int, dict[str, Any]],
    claims: list[tuple[Claim, dict[str, Any]]],
    gate: tuple[float, float],
    betas: list[float],
) -> str:
    """Every table, as Markdown."""
    beta, tau = gate
    cells = len(pool.measured)
    seeds = pool.seeds
    first = sorted(pool.measured)[0]
    parts = [
        f"Pooled over {cells} cells: base seeds {', '.join(map(str, seeds))} × "
        f"{cells // len(seeds)} training seeds each (each replicate sampled from its own noise). "
        "Every cell: mean [95 % interval]; rates Wilson, similarities and differences bootstrap "
        "over seeds and images."
    ]
    parts.append(
        "**Base models** (quality gate: the instrument reads the attribute a held-out caption "
        "asked for; chance 0.17 shape and colour, 0.33 background)\n\n" + _gate_table(gates, seeds)
    )

    header = [""]
    header += [f"{n}: {what}" for n in novels for what in ("similarity", "recognised")]
    rows = []
    for key, label in ROWS.items():
        row = [label]
        for n in novels:
            if key in ("training_images", "new_drawings"):
                # the same images in every cell: one cluster
                one = Pool({first: pool.measured[first]}, pool.resamples)
                row.append(
                    one.mean(lambda s, n=n, key=key: s["fidelity"][n][key]["similarity"]).cell()
                )
                values = pool.measured[first]["fidelity"][n][key]["recognised"]
                row.append(wilson(int(sum(values)), len(values)).cell() if values else "—")
            else:
                row.append(
                    pool.mean(lambda s, n=n, key=key: s["fidelity"][n][key]["similarity"]).cell()
                )
                row.append(
                    pool.rate(lambda s, n=n, key=key: s["fidelity"][n][key]["recognised"]).cell()
                )
        rows.append(row)
    parts.append(f"**Fidelity** (β = {beta:g}, τ = {tau:g})\n\n" + _table(header, rows))

    header = ["", *(c.replace(":", " ") for c in _changes()), "all"]
    rows = []
    for n in novels:
        for key in ("superclass", "locked", "learned_keys"):
            row = [f"{n}: {ROWS[key]}"]
            for change in _changes():
                row.append(
                    pool.rate(lambda s, n=n, key=key, c=change: s["alignment"][n][key][c]).cell()
                )
            row.append(pool.rate(lambda s, n=n, key=key: _aligned(s["alignment"][n][key])).cell())
            rows.append(row)
    parts.append(
        "**Prompt alignment** (how often the instrument reads the attribute asked for)\n\n"
        + _table(header, rows)
    )

    header = ["β"]
    for variant in VARIANT_NAMES.values():
        header += [f"{variant}: fidelity", f"{variant}: fidelity (edited)", f"{variant}: alignment"]
    rows = []

    def pooled(variant: str, b: float | None, what: str) -> Getter:
        def get(s: dict[str, Any]) -> list[float]:
            values: list[float] = []
            for n in novels:
                point = s["sweep"][n][variant][0] if b is None else _point(s, n, variant, b)
                if what == "alignment":
                    values += _aligned(point["alignment"])
                else:
                    values += point[what]["similarity"]
            return values

        return get

    for b in betas:
        row = [f"{b:g}"]
        for variant in VARIANT_NAMES:
            row += [
                pool.mean(pooled(variant, b, "fidelity")).cell(),
                pool.mean(pooled(variant, b, "fidelity_edited")).cell(),
                pool.rate(pooled(variant, b, "alignment")).cell(),
            ]
        rows.append(row)
    rows.append(
        [
            "superclass word",
            pool.mean(pooled("superclass", None, "fidelity")).cell(),
            pool.mean(pooled("superclass", None, "fidelity_edited")).cell(),
            pool.rate(pooled("superclass", None, "alignment")).cell(),
            "",
            "",
            "",
        ]
    )
    parts.append(
        f"**β sweep** (τ = {tau:g}; {', '.join(novels)} pooled; fidelity = similarity to the "
        "training images)\n\n" + _table(header, rows)
    )

    if "composition" in pool.measured[first]:
        header = ["two objects in one prompt", "left found", "right found", "both found"]
        labels = {
            "superclass": "base model, the two superclass words",
            "locked": "both concepts, keys locked",
            "learned_keys": "both concepts, keys learned",
        }
        rows = [
            [
                label,
                *(
                    pool.rate(lambda s, key=key, w=w: s["composition"][key][w]).cell()
                    for w in ("left", "right", "both")
                ),
            ]
            for key, label in labels.items()
        ]
        parts.append("**Composition**\n\n" + _table(header, rows))

    header = ["claim", "difference"]
    header += [f"base seed {s}" for s in seeds]
    header += ["pooled", "verdict (pooled)", "holds for every base model", "detectable"]
    if len(seeds) > 1:
        header.append(f"seed {seeds[1]} inside seed {seeds[0]}'s interval")
    held_out = _held_out_seeds(claims)
    for s in held_out:
        header += [f"held-out base seed {s}", "inside the pooled interval"]
    header.append("conclusion")
    rows = []
    for claim, found in claims:
        row = [claim.name, claim.measure]
        row += [f"{found['per_seed'][str(s)]['cell']}" for s in seeds]
        row += [
            found["pooled"]["cell"],
            found["verdict"],
            "yes" if found["every_seed"] else "no",
            f"±{found['detectable']:.2f}" if found["detectable"] > 0 else "— (no variation)",
        ]
        if len(seeds) > 1:
            row.append("yes" if found["second_inside_first"] else "no")
        for s in held_out:
            entry = found["replication"][s]
            row += [entry["cell"], "yes" if entry["inside"] else "**no**"]
        row.append(found["conclusion"])
        rows.append(row)
    parts.append(
        "**Claims** (difference per image, paired; *reproduced* where the interval excludes "
        "zero in the paper's direction; *detectable*: the smallest true difference this run "
        "would find with 80 % power at the 5 % level; a held-out base model is measured the same "
        "way but left out of the pooled interval, and its estimate must land inside it)\n\n"
        + _table(header, rows)
    )
    return "\n\n".join(parts) + "\n"


def _strip(images: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` images side by side [s, count·s, 3] (black where there are fewer)."""
    size = images.shape[1]
    row = np.zeros((size, count * size, 3), np.uint8)
    for k, image in enumerate(images[:count]):
        row[:, k * size : (k + 1) * size] = image
    return row


def _errorbar(estimate: Estimate) -> tuple[float, list[list[float]]]:
    return estimate.mean, [[estimate.mean - estimate.low], [estimate.high - estimate.mean]]


def _figure(
    pool: Pool,
    novels: list[str],
    claims: list[tuple[Claim, dict[str, Any]]],
    shown: dict[str, np.ndarray],
    gate: tuple[float, float],
    betas: list[float],
    path: Path,
) -> None:
    """One PNG: the claims' differences with their intervals (per base seed, pooled, and per
    held-out base seed), the β sweep with error bars on both axes, and example images of the
    first cell."""
    fig, (forest, curve, grid) = plt.subplots(
        1, 3, figsize=(21, 8), gridspec_kw={"width_ratios": [1.1, 1, 1]}
    )
    seeds = [str(seed) for seed in pool.seeds]
    held_out = _held_out_seeds(claims)
    labels = [f"{claim.measure}\n{claim.name.split(':')[0]}" for claim, _ in claims]
    keys = [*seeds, "pooled", *held_out]
    offsets = np.linspace(-0.3, 0.3, len(keys))
    for k, key in enumerate(keys):
        ys, xs, errors = [], [], [[], []]
        for row, (_, found) in enumerate(claims):
            if key == "pooled":
                entry = found["pooled"]
            else:
                entry = found["per_seed"][key] if key in seeds else found["replication"][key]
            ys.append(row + offsets[k])
            xs.append(entry["mean"])
            errors[0].append(entry["mean"] - entry["low"])
            errors[1].append(entry["high"] - entry["mean"])
        style = "ks" if key == "pooled" else ("o" if key in seeds else "D")
        name = "pooled" if key == "pooled" else f"base seed {key}"
        name += " (held out)" if key in held_out else ""
        forest.errorbar(xs, ys, xerr=errors, fmt=style, capsize=3, markersize=4, label=name)
    forest.axvline(0, color="gray", lw=1)
    forest.set_yticks(range(len(labels)))
    forest.set_yticklabels(labels, fontsize=7)
    forest.invert_yaxis()
    forest.set_xlabel("difference (per image, paired), 95 % interval")
    forest.set_title("claims: > 0 is the paper's direction")
    forest.legend(fontsize=8)
    forest.grid(alpha=0.3, axis="x")

    for n in novels:
        for variant, style in (("locked", "o-"), ("learned_keys", "s--")):
            xs, ys, xerr, yerr = [], [], [[], []], [[], []]
            for b in betas:
                x, xe = _errorbar(
                    pool.rate(
                        lambda s, n=n, v=variant, b=b: _aligned(_point(s, n, v, b)["alignment"])
                    )
                )
                y, ye = _errorbar(
                    pool.mean(
                        lambda s, n=n, v=variant, b=b: _point(s, n, v, b)["fidelity_edited"][
                            "similarity"
                        ]
                    )
                )
                xs.append(x)
                ys.append(y)
                for side in (0, 1):
                    xerr[side] += xe[side]
                    yerr[side] += ye[side]
            line = curve.errorbar(
                xs,
                ys,
                xerr=xerr,
                yerr=yerr,
                fmt=style,
                capsize=2,
                label=f"{n}, {VARIANT_NAMES[variant]}",
            )
            for b, xi, yi in zip(betas, xs, ys, strict=True):
                curve.annotate(
                    f"β={b:g}",
                    (xi, yi),
                    fontsize=7,
                    color=line[0].get_color(),
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        x, xe = _errorbar(pool.rate(lambda s, n=n: _aligned(s["alignment"][n]["superclass"])))
        y, ye = _errorbar(
            pool.mean(
                lambda s, n=n: s["sweep"][n]["superclass"][0]["fidelity_edited"]["similarity"]
            )
        )
        curve.errorbar([x], [y], xerr=xe, yerr=ye, fmt="k*", markersize=10, capsize=2)
        curve.annotate(
            f"base, superclass ({n})",
            (x, y),
            fontsize=7,
            xytext=(4, -10),
            textcoords="offset points",
        )
    curve.set_xlabel("prompt alignment (instrument reads the attribute asked for)")
    curve.set_ylabel("fidelity (feature similarity to the training images), edited prompts")
    curve.set_title(f"β sweep at inference, τ = {gate[1]:g} (95 % intervals)")
    curve.legend(fontsize=8)
    curve.grid(alpha=0.3)

    columns = 10
    labelled = [(key.replace("/", ": ").replace("_", " "), images) for key, images in shown.items()]
    rows = [_strip(images, columns) for _, images in labelled]
    size = rows[0].shape[0]
    gap = np.full((2, columns * size, 3), 255, np.uint8)
    stacked = np.concatenate([part for row in rows for part in (row, gap)])
    grid.imshow(stacked, interpolation="nearest")
    grid.set_yticks([k * (size + 2) + size / 2 for k in range(len(rows))])
    grid.set_yticklabels([label for label, _ in labelled], fontsize=7)
    grid.set_xticks([])
    grid.set_title(
        f"examples, base seed {seeds[0]}, replicate 0 (edited: gray, white, red, blue, green)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _entry(estimate: Estimate) -> dict[str, Any]:
    return {**asdict(estimate), "cell": estimate.cell()}


def report(
    measured: dict[Cell, dict[str, Any]],
    gates: dict[int, dict[str, Any]],
    shown: dict[str, np.ndarray],
    folder: Path,
    resamples: int = 2000,
    replication: dict[Cell, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write ``tables.md``, ``figure.png`` and ``claims.json`` to ``folder`` from stage 5's
    summaries ``measured[(base seed, replicate)]`` and the gates' summaries ``gates[base
    seed]``; returns the claims (JSON-ready). The cells of ``replication`` (base models held
    out) are not pooled: each claim's estimate on each of their base seeds is checked against
    the pooled interval."""
    pool = Pool(measured, resamples)
    held_out = Pool(replication, resamples) if replication else None
    first = measured[sorted(measured)[0]]
    novels = list(first["fidelity"])
    beta, tau = first["inference_gate"]
    betas = [point["beta"] for point in first["sweep"][novels[0]]["locked"]]
    evaluated = []
    for claim in _claims(novels, beta, betas):
        if claim.name.startswith("composition") and "composition" not in first:
            continue
        pooled = pool.difference(claim.first, claim.second)
        per_seed = {s: pool.difference(claim.first, claim.second, s) for s in pool.seeds}
        found = {
            "measure": claim.measure,
            "expected": claim.expected,
            "pooled": _entry(pooled),
            "per_seed": {str(s): _entry(e) for s, e in per_seed.items()},
            "verdict": _verdict(pooled, claim.expected),
            "every_seed": all(
                _verdict(e, claim.expected) == _verdict(pooled, claim.expected)
                and _verdict(e, claim.expected) in ("reproduced", "consistent with no difference")
                for e in per_seed.values()
            ),
            "detectable": detectable(pooled),
        }
        if len(pool.seeds) > 1:
            one, two = per_seed[pool.seeds[0]], per_seed[pool.seeds[1]]
            found["second_inside_first"] = one.low <= two.mean <= one.high
        if held_out is not None:
            again = {s: held_out.difference(claim.first, claim.second, s) for s in held_out.seeds}
            found["replication"] = {
                str(s): {**_entry(e), "inside": pooled.low <= e.mean <= pooled.high}
                for s, e in again.items()
            }
        found["conclusion"] = _conclusion(found)
        evaluated.append((claim, found))
    (folder / "tables.md").write_text(_tables(pool, novels, gates, evaluated, (beta, tau), betas))
    _figure(pool, novels, evaluated, shown, (beta, tau), betas, folder / "figure.png")
    claims = {claim.name: found for claim, found in evaluated}
    (folder / "claims.json").write_text(json.dumps(claims, indent=2) + "\n")
    return {"cells": [list(cell) for cell in sorted(measured)], "claims": claims}
