"""The toy world of issues 7 and 19, stage by stage, each stage's artefacts cached under one
folder, with replicates and several base models.

    python -m bench.toyworld.run [--cache .toyworld] [--profile quick|full|large|tiny]
                                 [--until STAGE]
                                 [--rebuild STAGE] [--keep-built] [--threads N]
                                 [--replicates N] [--base-seeds 0,1] [--replication-seeds 2]
                                 [--betas 0.4,0.7,1] [--base-minutes M] [--base-steps N]

Stages, in order (each reads the ones before it; see toyworld/cache.py for the folder layout):

1. ``world``        draw the datasets (train / held-out, one and two objects) and a preview;
2. ``instrument``   train the classifier, report its held-out accuracy (≥ 95 % to be trusted);
3. ``autoencoder``  train the VAE (shared by every base model);
   per base seed b (folder ``base-<b>/``):
   ``base``         pretrain text encoder + UNet with seed b (a step count, within a time
                    budget); ``gate``: generate for held-out captions and report what the
                    instrument reads;
4. ``concepts``     per replicate r (``base-<b>/concepts-r<r>``): each novel object's training
                    images, trained with ``pfx train --seed r``, keys locked and keys learned
                    (toyworld/concepts.py);
5. ``measurements`` per replicate (``base-<b>/measurements-r<r>``): fidelity, prompt alignment,
                    the β sweep, key locking and composition, sampled from noise seed r, one
                    value per image (toyworld/measure.py);
6. ``report``       every replicate of every base model pooled, 95 % intervals (Wilson for
                    rates, a two-stage bootstrap over seeds and images for similarities and
                    differences), the claims table: ``tables.md``, ``figure.png``
                    (toyworld/report.py, toyworld/stats.py).

A second run reuses every stage whose settings did not change (``log.jsonl`` says which): more
replicates or another base seed build only what is new. After a change of code outside a
stage's own module, ``--rebuild STAGE`` rebuilds that stage and the ones after it. Seeds are
fixed; the base model trains for a fixed step count unless its time budget (``--base-minutes``)
stops it first. Each kind of stage is a function ``(Run, ...) -> StageResult`` in
:data:`STAGES`, reading ``run.results`` of the stages before it and calling ``run.stage``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
import transformers
from diffusers import AutoencoderKL, DiffusionPipeline
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

import perfusion_format as pf
from bench.common import REPO

from .base_model import (
    CONTEXT,
    SCHEDULE,
    AutoencoderSettings,
    BaseSettings,
    build_pipeline,
    pretrain,
    quality_gate,
    train_autoencoder,
    without_colours,
)
from .cache import Cache, StageResult, source_digest
from .concepts import (
    TEMPLATE,
    VARIANTS,
    ConceptSettings,
    concept_file,
    train_concept,
    write_training_images,
)
from .instrument import (
    Instrument,
    InstrumentSettings,
    Progress,
    accuracy,
    to_tensor,
    train_instrument,
)
from .measure import MeasureSettings, measure
from .report import report
from .world import (
    NOVEL_OBJECTS,
    Sample,
    World,
    draw_novel,
    load_sample,
    save_grid,
    save_sample,
)

__all__ = ["PROFILES", "STAGES", "Profile", "Run", "main", "run"]

TOYWORLD = Path(__file__).resolve().parent
RUNTIME = REPO / "runtime" / "src" / "perfusion_runtime"
#: The code each stage's output depends on besides its inputs (whose keys its key holds): a
#: change to it rebuilds the stage. (This file's stage functions are not in it: after changing
#: them, ``--rebuild STAGE``.)
STAGE_CODE: dict[str, tuple[Path, ...]] = {
    "world": (TOYWORLD / "world.py",),
    "instrument": (TOYWORLD / "instrument.py",),
    "autoencoder": (TOYWORLD / "base_model.py",),
    "base": (TOYWORLD / "base_model.py",),
    "gate": (TOYWORLD / "base_model.py",),
    "concepts": (TOYWORLD / "concepts.py", RUNTIME),
    "measurements": (TOYWORLD / "measure.py", RUNTIME),
    "report": (TOYWORLD / "report.py", TOYWORLD / "stats.py"),
}
#: The instrument's held-out accuracy per attribute needed to trust its readings.
TRUSTED = 0.95
#: Datasets the world stage draws: name → (split, objects per image).
DATASETS = {
    "train": ("train", 1),
    "train_pairs": ("train", 2),
    "held_out": ("held_out", 1),
    "held_out_pairs": ("held_out", 2),
}


@dataclass(frozen=True)
class GateSettings:
    """How the quality gate samples: held-out captions with one and with two objects."""

    singles: int = 120
    pairs: int = 60
    steps: int = 30
    guidance: float = 4.0
    seed: int = 0


@dataclass(frozen=True)
class Profile:
    """Every setting of a run."""

    world: World
    counts: dict[str, int]
    instrument: InstrumentSettings
    autoencoder: AutoencoderSettings
    base: BaseSettings
    gate: GateSettings
    concepts: ConceptSettings
    measure: MeasureSettings
    require_trusted: bool = True
    replicates: int = 3
    """Concepts trained (and measured) per novel object, variant and base model: seeds 0…N−1."""
    base_seeds: tuple[int, ...] = (0, 1)
    """The base models: one pretraining seed each."""
    replication_seeds: tuple[int, ...] = ()
    """Base models held out of the pooled intervals: each claim is measured on them the same
    way and checked against the interval the ``base_seeds`` give (a replication)."""
    resamples: int = 2000
    """Bootstrap resamples per interval."""


_FULL = Profile(
    world=World(),
    counts={"train": 20000, "train_pairs": 6000, "held_out": 1000, "held_out_pairs": 500},
    instrument=InstrumentSettings(),
    autoencoder=AutoencoderSettings(),
    base=BaseSettings(minutes=30.0, max_steps=1500),
    gate=GateSettings(),
    concepts=ConceptSettings(steps=250, batch=4, accumulate=1, in_process=True),
    measure=MeasureSettings(images=8, betas=(0.4, 0.7, 1.0), composition=8, steps=20),
)

PROFILES: dict[str, Profile] = {
    # Longer, optional: 1,500 pretraining steps (or 30 minutes, whichever comes first), 250
    # concept steps of 4 images, three β. Not run yet; from the quick profile's stage costs
    # about two hours on an idle 2-core CPU.
    "full": _FULL,
    # The default (make toyworld): two base models of 600 pretraining steps, three replicates
    # each, 150 concept steps of 4 images, 8 images per prompt, cell and replicate, the
    # inference β only (no β sweep). Measured in one process on an idle 2-core CPU: about 15
    # minutes per base model and 2.5 per replicate and base model, a few minutes of shared
    # stages — about 50 minutes; --replicates 5 --replication-seeds 2 (the README's tables)
    # about 85.
    "quick": replace(
        _FULL,
        base=BaseSettings(minutes=30.0, max_steps=600),
        concepts=ConceptSettings(steps=150, batch=4, accumulate=1, in_process=True),
        measure=MeasureSettings(images=8, betas=(0.7,), composition=8, steps=20),
    ),
    # The larger, optional run: the paper's 400 steps of 4 × 4 per concept, 4,500 pretraining
    # steps, five replicates, 20 images per cell and replicate, five β, 30 sampling steps;
    # several hours on a 2-core CPU.
    "large": replace(
        _FULL,
        base=BaseSettings(minutes=40.0, max_steps=4500),
        concepts=ConceptSettings(),
        measure=MeasureSettings(),
        replicates=5,
    ),
    # A miniature of every stage for the tests: seconds, and nothing in it is trustworthy.
    "tiny": Profile(
        world=World(size=16),
        counts={"train": 600, "train_pairs": 200, "held_out": 150, "held_out_pairs": 50},
        instrument=InstrumentSettings(steps=200, batch=64, width=8, features=32),
        autoencoder=AutoencoderSettings(steps=4, batch=8, widths=(8, 16)),
        base=BaseSettings(
            minutes=None, max_steps=3, batch=8, warmup=1, text_width=32, unet_widths=(16, 32)
        ),
        gate=GateSettings(singles=4, pairs=2, steps=2),
        concepts=ConceptSettings(images=3, steps=2, batch=2, accumulate=1, in_process=True),
        measure=MeasureSettings(images=2, betas=(0.7,), composition=2, references=4, steps=2),
        require_trusted=False,
        replicates=2,
        base_seeds=(0,),
        resamples=200,
    ),
}


class Reporter:
    """Progress bars and one line per finished stage, on a rich console."""

    def __init__(self) -> None:
        self.console = Console()

    @contextmanager
    def task(self, stage: str) -> Iterator[Progress]:
        """A progress callback for ``stage``, shown while the block runs."""
        columns = (
            TextColumn(f"[bold]{stage:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        with RichProgress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task("", total=None)

            def update(done: int, total: int, status: str) -> None:
                bar.update(task, completed=done, total=total or None, description=status)

            yield update

    def finished(self, result: StageResult) -> None:
        """Say that ``result``'s stage was built or reused, and what it found."""
        action = f"built in {result.seconds:.0f} s" if result.built else "cached"
        tables = result.folder / "tables.md"
        if tables.is_file():  # the measurements: their tables, not their numbers
            self.console.print(f"[bold]{result.name:<12}[/] {action}: {result.folder}")
            self.console.print(tables.read_text(), soft_wrap=True, markup=False)
            return
        if "measurements" in result.name:  # one value per image: too many to print
            self.console.print(f"[bold]{result.name:<12}[/] {action}: {result.folder}")
            return
        summary = json.dumps(result.summary, default=str)
        self.console.print(f"[bold]{result.name:<12}[/] {action}: {summary}", soft_wrap=True)


@dataclass
class Run:
    """One run: the cache, the settings, and the stages' results so far."""

    cache: Cache
    profile: Profile
    reporter: Reporter | None = None
    rebuild: frozenset[str] = frozenset()
    results: dict[str, StageResult] = field(default_factory=dict)
    keep_built: bool = False
    """Reuse built stages whose code changed since (``--keep-built``)."""

    def stage(
        self,
        kind: str,
        settings: dict[str, Any],
        make: Callable[[Path], dict[str, Any]],
        folder: str | None = None,
    ) -> StageResult:
        """:meth:`Cache.stage` for a stage of ``kind`` in ``folder`` (default: the kind's name),
        with the digest of the kind's code in its key, rebuilding the kinds the run was asked to
        rebuild; the result is kept in ``results[folder]``."""
        keyed = {**settings, "code": source_digest(STAGE_CODE[kind])}
        name = folder or kind
        result = self.cache.stage(
            name, keyed, make, rebuild=kind in self.rebuild, ignore_code=self.keep_built
        )
        self.results[name] = result
        if self.reporter is not None:
            self.reporter.finished(result)
        return result

    @contextmanager
    def progress(self, stage: str) -> Iterator[Progress | None]:
        """The reporter's progress callback for ``stage`` (None when quiet)."""
        if self.reporter is None:
            yield None
        else:
            with self.reporter.task(stage) as update:
                yield update

    def world_data(self, name: str) -> Sample:
        """A dataset the world stage drew (see :data:`DATASETS`)."""
        return load_sample(self.results["world"].folder / f"{name}.npz")


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 4) for key, value in values.items()}


def world_stage(run: Run) -> StageResult:
    """Stage 1: draw the datasets, and a preview (rows: one object, two objects, novel
    objects)."""
    world, counts = run.profile.world, run.profile.counts

    def make(folder: Path) -> dict[str, Any]:
        with run.progress("world") as progress:
            for done, (name, (split, objects)) in enumerate(DATASETS.items()):
                if progress is not None:
                    progress(done, len(DATASETS), f"drawing {name}")
                save_sample(folder / f"{name}.npz", world.sample(split, counts[name], objects))
        previews = [load_sample(folder / f"{name}.npz").images[:16] for name in DATASETS]
        novel = [draw_novel(world, novel, 8) for novel in NOVEL_OBJECTS.values()]
        save_grid(folder / "preview.png", np.concatenate([*previews, *novel]), scale=3)
        return {
            "triples": {split: len(world.triples(split)) for split in ("train", "held_out")},
            "held_out": sorted(world.caption([t[:2]], t[2]) for t in world.held_out),
            "images": counts,
        }

    return run.stage("world", {"world": world.settings(), "counts": counts}, make)


def instrument_stage(run: Run) -> StageResult:
    """Stage 2: train the instrument on the training datasets; held-out accuracy."""
    settings = run.profile.instrument

    def make(folder: Path) -> dict[str, Any]:
        train = [run.world_data("train"), run.world_data("train_pairs")]
        with run.progress("instrument") as progress:
            instrument = train_instrument(run.profile.world, train, settings, progress)
        instrument.save(folder)
        found = {
            objects: _rounded(accuracy(instrument, run.world_data(name)))
            for objects, name in (("single", "held_out"), ("pairs", "held_out_pairs"))
        }
        worst = min(value for values in found.values() for value in values.values())
        return {"held_out_accuracy": found, "trusted": worst >= TRUSTED}

    key = {"world": run.results["world"].key, "instrument": asdict(settings)}
    result = run.stage("instrument", key, make)
    if run.profile.require_trusted and not result.summary["trusted"]:
        raise SystemExit(
            f"the instrument reads held-out images below {TRUSTED:.0%} on some attribute "
            f"({result.summary['held_out_accuracy']}); its readings cannot be trusted"
        )
    return result


def autoencoder_stage(run: Run) -> StageResult:
    """Stage 3a: train the VAE on the training images; held-out reconstruction error."""
    settings = run.profile.autoencoder

    def make(folder: Path) -> dict[str, Any]:
        images = np.concatenate([run.world_data(n).images for n in ("train", "train_pairs")])
        with run.progress("autoencoder") as progress:
            vae = train_autoencoder(images, settings, progress)
        vae.save_pretrained(folder)
        pixels = to_tensor(run.world_data("held_out").images[:256])
        with torch.no_grad():
            decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
        return {
            "held_out_mse": round(float((decoded - pixels).pow(2).mean()), 5),
            "scaling_factor": round(vae.config.scaling_factor, 4),
        }

    key = {"world": run.results["world"].key, "autoencoder": asdict(settings)}
    return run.stage("autoencoder", key, make)


def _base(seed: int) -> str:
    """The folder of base seed ``seed``'s stages."""
    return f"base-{seed}"


def base_stage(run: Run, seed: int) -> StageResult:
    """Stage 3b: pretrain the base pipeline's text encoder and UNet with seed ``seed``; saved
    as ``pipeline/``."""
    settings = replace(run.profile.base, seed=seed)

    def make(folder: Path) -> dict[str, Any]:
        vae = AutoencoderKL.from_pretrained(run.results["autoencoder"].folder)
        pipe = build_pipeline(run.profile.world, vae, settings)
        train = [run.world_data("train"), run.world_data("train_pairs")]
        with run.progress(f"base {seed}") as progress:
            summary = pretrain(pipe, train, settings, progress)
        pipe.save_pretrained(folder / "pipeline")
        return summary

    key = {
        "world": run.results["world"].key,
        "autoencoder": run.results["autoencoder"].key,
        "base": asdict(settings),
        "schedule": SCHEDULE,
        "context": CONTEXT,
    }
    return run.stage("base", key, make, f"{_base(seed)}/base")


def load_base(run: Run, seed: int | None = None) -> Any:
    """The pretrained base pipeline of base seed ``seed`` (default: the profile's first), loaded
    as a user would (from its folder, offline)."""
    seed = run.profile.base_seeds[0] if seed is None else seed
    folder = run.results[f"{_base(seed)}/base"].folder / "pipeline"
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gate_stage(run: Run, seed: int) -> StageResult:
    """Stage 3c: the quality gate of base seed ``seed`` — for held-out captions, how often the
    instrument reads the requested attributes off the base model's images (rates, and the
    number of objects read); ``samples.png`` shows the first ones."""
    settings = run.profile.gate

    def make(folder: Path) -> dict[str, Any]:
        pipe = load_base(run, seed)
        instrument = Instrument.load(run.results["instrument"].folder)
        found, counted, shown = {}, {}, []
        for objects, name, count in (
            ("single", "held_out", settings.singles),
            ("pairs", "held_out_pairs", settings.pairs),
        ):
            sample = run.world_data(name).head(count)
            rates, images = quality_gate(
                pipe,
                instrument,
                sample,
                steps=settings.steps,
                guidance=settings.guidance,
                seed=settings.seed,
            )
            found[objects] = _rounded(rates)
            counted[objects] = int(sample.labels.shape[0] * sample.labels.shape[1])
            shown.append(images[:32])
        save_grid(folder / "samples.png", np.concatenate(shown), scale=3)
        return {"held_out_read_rate": found, "objects_read": counted}

    key = {
        "base": run.results[f"{_base(seed)}/base"].key,
        "instrument": run.results["instrument"].key,
        "gate": asdict(settings),
    }
    return run.stage("gate", key, make, f"{_base(seed)}/gate")


def concepts_stage(run: Run, seed: int, replicate: int) -> StageResult:
    """Stage 4, one replicate of base seed ``seed``: each novel object's training images
    (``<name>/NN.png``) and its concepts, one per variant
    (``<name>.<variant>.perfusion.safetensors``), made by ``pfx train --seed <replicate>``; the
    covariance is estimated over the world's training captions (``captions.txt``)."""
    settings = replace(run.profile.concepts, seed=replicate)
    base = run.results[f"{_base(seed)}/base"]

    def make(folder: Path) -> dict[str, Any]:
        model = base.folder / "pipeline"
        captions = {c for name in ("train", "train_pairs") for c in run.world_data(name).captions}
        captions |= {without_colours(caption) for caption in captions}  # as pretraining saw them
        (folder / "captions.txt").write_text("\n".join(sorted(captions)) + "\n")
        for novel in NOVEL_OBJECTS.values():
            write_training_images(run.profile.world, novel, settings.images, folder / novel.name)
        jobs = [(novel, variant) for novel in NOVEL_OBJECTS.values() for variant in VARIANTS]
        reports = {}
        with run.progress(f"concepts {seed}/{replicate}") as progress:
            for done, (novel, variant) in enumerate(jobs):
                if progress is not None:
                    progress(done, len(jobs), f"pfx train {novel.name} ({variant})")
                report = train_concept(
                    model,
                    folder / novel.name,
                    folder / "captions.txt",
                    novel,
                    variant,
                    concept_file(folder, novel, variant),
                    settings,
                    threads=torch.get_num_threads(),
                )
                keys = ("final_loss", "seconds", "bytes")
                reports[f"{novel.name}.{variant}"] = {key: report[key] for key in keys}
        return {"concepts": reports}

    key = {
        "world": run.results["world"].key,
        "base": base.key,
        "novel": {name: asdict(novel) for name, novel in NOVEL_OBJECTS.items()},
        "concepts": asdict(settings),
        "template": TEMPLATE,
        "variants": VARIANTS,
    }
    return run.stage("concepts", key, make, f"{_base(seed)}/concepts-r{replicate}")


def _training_images(folder: Path) -> np.ndarray:
    """The PNG images in ``folder``, in name order, as uint8 [n, s, s, 3]."""
    return np.stack([np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))])


def measurements_stage(run: Run, seed: int, replicate: int) -> StageResult:
    """Stage 5, one replicate of base seed ``seed``: the measurements of
    :mod:`toyworld.measure` on that replicate's concepts, sampled from noise seed
    ``replicate``; the summary holds every per-image value, ``shown.npz`` the example images."""
    settings = run.profile.measure
    concepts_result = run.results[f"{_base(seed)}/concepts-r{replicate}"]

    def make(folder: Path) -> dict[str, Any]:
        concepts_folder = concepts_result.folder
        novels = list(NOVEL_OBJECTS.values())
        concepts = {
            novel.name: {v: pf.load(concept_file(concepts_folder, novel, v)) for v in VARIANTS}
            for novel in novels
        }
        training = {n.name: _training_images(concepts_folder / n.name) for n in novels}
        pipe = load_base(run, seed)
        instrument = Instrument.load(run.results["instrument"].folder)
        with run.progress(f"measure {seed}/{replicate}") as progress:
            result = measure(
                pipe,
                instrument,
                run.profile.world,
                concepts,
                novels,
                training,
                settings,
                noise_seed=replicate,
                progress=progress,
            )
        np.savez_compressed(folder / "shown.npz", **result.shown)
        return result.summary

    key = {
        "concepts": concepts_result.key,
        "instrument": run.results["instrument"].key,
        "measure": asdict(settings),
        "noise_seed": replicate,
    }
    return run.stage("measurements", key, make, f"{_base(seed)}/measurements-r{replicate}")


def report_stage(run: Run) -> StageResult:
    """Stage 6: every replicate of every base model pooled, with intervals: ``tables.md``,
    ``figure.png`` and the claims (toyworld/report.py); the summary holds the claims."""
    profile = run.profile
    seeds = profile.base_seeds + profile.replication_seeds
    cells = [(s, r) for s in seeds for r in range(profile.replicates)]

    def summaries(of: tuple[int, ...]) -> dict[tuple[int, int], dict[str, Any]]:
        return {
            (s, r): run.results[f"{_base(s)}/measurements-r{r}"].summary
            for s, r in cells
            if s in of
        }

    def make(folder: Path) -> dict[str, Any]:
        measured, replication = summaries(profile.base_seeds), summaries(profile.replication_seeds)
        gates = {
            s: {
                **run.results[f"{_base(s)}/base"].summary,
                **run.results[f"{_base(s)}/gate"].summary,
            }
            for s in seeds
        }
        first = run.results[f"{_base(seeds[0])}/measurements-r0"].folder / "shown.npz"
        with np.load(first) as shown_file:
            shown = {name: shown_file[name] for name in shown_file.files}
        return report(
            measured, gates, shown, folder, resamples=profile.resamples, replication=replication
        )

    key = {
        "measurements": [run.results[f"{_base(s)}/measurements-r{r}"].key for s, r in cells],
        "gates": [run.results[f"{_base(s)}/gate"].key for s in seeds],
        "replication_seeds": list(profile.replication_seeds),
        "resamples": profile.resamples,
    }
    return run.stage("report", key, make)


#: The kinds of stage, in order (``--until`` and ``--rebuild`` name one); the later ones run
#: once per base seed (base, gate) or per base seed and replicate (concepts, measurements).
STAGES: dict[str, Callable[..., StageResult]] = {
    "world": world_stage,
    "instrument": instrument_stage,
    "autoencoder": autoencoder_stage,
    "base": base_stage,
    "gate": gate_stage,
    "concepts": concepts_stage,
    "measurements": measurements_stage,
    "report": report_stage,
}


def run(
    root: Path,
    profile: Profile,
    until: str = "report",
    reporter: Reporter | None = None,
    rebuild: str | None = None,
    keep_built: bool = False,
) -> Run:
    """Run (or reuse) every stage up to and including the kind ``until``, building ``rebuild``
    and the kinds after it again even when cached; returns the run. The order: every base model
    (and its gate), then replicate 0 (concepts, measurements) of every base model, replicate 1,
    …, so that an interrupted run holds as many replicates of each base model."""
    names = list(STAGES)
    last = names.index(until)
    forced = frozenset(names[names.index(rebuild) :]) if rebuild else frozenset()
    state = Run(Cache(root), profile, reporter, forced, keep_built=keep_built)

    def wanted(kind: str) -> bool:
        return names.index(kind) <= last

    for kind in ("world", "instrument", "autoencoder"):
        if wanted(kind):
            STAGES[kind](state)
    seeds = profile.base_seeds + profile.replication_seeds
    for seed in seeds:
        for kind in ("base", "gate"):
            if wanted(kind):
                STAGES[kind](state, seed)
    for replicate in range(profile.replicates):
        for seed in seeds:
            for kind in ("concepts", "measurements"):
                if wanted(kind):
                    STAGES[kind](state, seed, replicate)
    if wanted("report"):
        report_stage(state)
    return state


def _seeds(text: str) -> tuple[int, ...]:
    """``0,1`` → (0, 1)."""
    seeds = tuple(int(part) for part in text.split(",") if part.strip())
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"base seeds must be distinct integers: {text!r}")
    return seeds


def _betas(text: str) -> tuple[float, ...]:
    """``0.4,0.7,1`` → (0.4, 0.7, 1.0)."""
    try:
        betas = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"β values must be numbers: {text!r}") from None
    if not betas or len(set(betas)) != len(betas) or not all(0 < b <= 1 for b in betas):
        raise argparse.ArgumentTypeError(f"β values must be distinct, in (0, 1]: {text!r}")
    return betas


def main(argv: list[str] | None = None) -> int:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=REPO / ".toyworld", help="cache folder")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--until", choices=list(STAGES), default=list(STAGES)[-1])
    parser.add_argument(
        "--rebuild", choices=list(STAGES), help="rebuild this stage and those after it"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--keep-built",
        action="store_true",
        help="reuse built stages whose settings match even where their code changed since",
    )
    parser.add_argument(
        "--replicates", type=int, default=None, help="training seeds per concept (default 3)"
    )
    parser.add_argument(
        "--base-seeds", type=_seeds, default=None, help="base models' seeds, e.g. 0,1 (default)"
    )
    parser.add_argument(
        "--replication-seeds",
        type=_seeds,
        default=None,
        help="base models held out of the intervals and checked against them, e.g. 2",
    )
    parser.add_argument(
        "--betas",
        type=_betas,
        default=None,
        help="the β sweep at inference, holding the concepts' β (0.7), e.g. 0.4,0.7,1",
    )
    parser.add_argument("--base-minutes", type=float, default=None, help="pretraining budget")
    parser.add_argument("--base-steps", type=int, default=None, help="pretraining steps")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    profile = PROFILES[args.profile]
    if args.base_steps is not None:  # exactly so many steps, unless a budget is given too
        base = replace(profile.base, max_steps=args.base_steps, minutes=args.base_minutes)
        profile = replace(profile, base=base)
    elif args.base_minutes is not None:
        profile = replace(profile, base=replace(profile.base, minutes=args.base_minutes))
    if args.replicates is not None:
        if args.replicates < 1:
            parser.error("--replicates must be at least 1")
        profile = replace(profile, replicates=args.replicates)
    if args.base_seeds is not None:
        profile = replace(profile, base_seeds=args.base_seeds)
    if args.betas is not None:
        profile = replace(profile, measure=replace(profile.measure, betas=args.betas))
    if args.replication_seeds is not None:
        profile = replace(profile, replication_seeds=args.replication_seeds)
    if set(profile.base_seeds) & set(profile.replication_seeds):
        parser.error("a replication seed cannot also be a base seed")
    reporter = Reporter()
    reporter.console.print(
        f"toy world, profile {args.profile}, base seeds {list(profile.base_seeds)}, "
        f"replication seeds {list(profile.replication_seeds)}, "
        f"{profile.replicates} replicates, cache {args.cache}"
    )
    run(args.cache, profile, args.until, reporter, args.rebuild, args.keep_built)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
