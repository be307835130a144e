"""A miniature of the toy world (bench/toyworld): the world's drawing and splits, and stages 1–6
run on a tiny world with a few steps each — two replicates, a second base seed added from the
cache — through the same code and cache as the benchmark (stage 4 runs the real ``pfx train``
command, in-process)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

if str(REPO) not in sys.path:  # the bench package, imported from the repository root
    sys.path.append(str(REPO))

import perfusion_format as pf
import perfusion_runtime as pr
from bench.toyworld.base_model import without_colours
from bench.toyworld.cache import STAMP
from bench.toyworld.concepts import TEMPLATE, VARIANTS, concept_file, token
from bench.toyworld.instrument import Instrument, accuracy
from bench.toyworld.measure import ALIGNMENT, prompt
from bench.toyworld.run import PROFILES, STAGE_CODE, Run, load_base, main, run
from bench.toyworld.world import (
    BACKGROUND_JITTER,
    COLOUR_JITTER,
    NOVEL_OBJECTS,
    World,
    draw_novel,
    halves,
    load_sample,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = PROFILES["tiny"]


# --------------------------------------------------------------------------------------------
# Stage 1: the world
# --------------------------------------------------------------------------------------------


def test_the_same_world_draws_the_same_bytes() -> None:
    for objects in (1, 2):
        first = World(seed=3).sample("train", 12, objects)
        again = World(seed=3).sample("train", 12, objects)
        assert first.images.tobytes() == again.images.tobytes()
        assert first.captions == again.captions
        # Image i depends on (seed, split, objects, i) alone: a shorter sample is a prefix.
        shorter = World(seed=3).sample("train", 5, objects)
        assert shorter.images.tobytes() == first.images[:5].tobytes()
        other = World(seed=4).sample("train", 12, objects)
        assert other.images.tobytes() != first.images.tobytes()
    star = NOVEL_OBJECTS["stripy"]
    assert draw_novel(World(), star, 3).tobytes() == draw_novel(World(), star, 3).tobytes()


def _check_drawn(world: World, image: np.ndarray, shape: int, colour: int, background: int) -> None:
    """The image's corners are the background's colour; its object's solid pixels (those as far
    from the background as any) are the object's colour; a ring has background at the centre of
    its object pixels, every other shape has itself there."""
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1]].astype(int)
    expected = np.array(world.backgrounds[background][1])
    assert np.abs(corners - expected).max() <= BACKGROUND_JITTER + 1
    distance = np.abs(image.astype(int) - corners[0]).sum(axis=-1)
    assert distance.max() > 90
    solid = image[distance >= 0.9 * distance.max()]
    expected = np.array(world.colours[colour][1])
    assert np.abs(np.median(solid, axis=0) - expected).max() <= COLOUR_JITTER + 1
    drawn = distance > distance.max() / 2
    y, x = (round(c) for c in np.argwhere(drawn).mean(axis=0))
    assert drawn[y, x] == (world.shapes[shape] != "ring")


def test_captions_say_what_is_drawn() -> None:
    world = World()
    single = world.sample("train", 60)
    for image, caption, ((shape, colour, background),) in zip(*vars(single).values(), strict=True):
        article = "an" if world.names("colour")[colour] == "orange" else "a"
        words = (
            world.names("colour")[colour],
            world.shapes[shape],
            world.names("background")[background],
        )
        assert caption == f"{article} {words[0]} {words[1]} on a {words[2]} background"
        _check_drawn(world, image, shape, colour, background)
    pairs = world.sample("train", 30, objects=2)
    for image, caption, labels in zip(*vars(pairs).values(), strict=True):
        names = [f"{world.names('colour')[c]} {world.shapes[s]}" for s, c, _ in labels]
        assert re.fullmatch(rf"an? {names[0]} and an? {names[1]} on a \w+ background", caption)
        for half, (shape, colour, background) in zip(halves(image[None]), labels, strict=True):
            _check_drawn(world, half[0], shape, colour, background)


def test_captions_without_colours_keep_shapes_and_background() -> None:
    """What pretraining shows one time in four: the caption with its colour words gone."""
    world = World()
    for objects in (1, 2):
        sample = world.sample("train", 40, objects)
        for caption, labels in zip(sample.captions, sample.labels, strict=True):
            things = " and ".join(f"a {world.shapes[s]}" for s, _, _ in labels)
            background = world.names("background")[labels[0][2]]
            assert without_colours(caption) == f"{things} on a {background} background"


def test_held_out_triples_never_appear_in_training_images() -> None:
    world = World()
    held_out = world.held_out
    assert held_out and set(world.triples("held_out")) == held_out
    train = [world.sample("train", 400), world.sample("train", 200, objects=2)]
    seen = {tuple(t) for sample in train for t in sample.labels.reshape(-1, 3).tolist()}
    assert not seen & held_out
    # Held out as combinations only: every (shape, colour) pair and every word still trains.
    pairs = {(s, c) for s, c, _ in world.triples("train")}
    assert len(pairs) == len(world.shapes) * len(world.colours)
    assert {b for *_, b in world.triples("train")} == set(range(len(world.backgrounds)))
    tested = world.sample("held_out", 50)
    assert {tuple(t) for t in tested.labels[:, 0].tolist()} <= held_out
    left = world.sample("held_out", 20, objects=2).labels[:, 0]
    assert {tuple(t) for t in left.tolist()} <= held_out


def test_novel_objects_are_patterns_on_world_shapes() -> None:
    world = World()
    for novel in NOVEL_OBJECTS.values():
        assert novel.shape in world.vocabulary()
        image = draw_novel(world, novel, 1)[0]
        for colour in novel.colours:  # both colours of the pattern are drawn
            assert (np.abs(image.astype(int) - colour).sum(axis=-1) < 30).sum() > 10


# --------------------------------------------------------------------------------------------
# Stages 1–3 in miniature, and the cache
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run(tmp_path_factory.mktemp("toyworld"), TINY)


def _names(seeds: tuple[int, ...], replicates: int) -> list[str]:
    """The stages of a run, in order."""
    names = ["world", "instrument", "autoencoder"]
    for seed in seeds:
        names += [f"base-{seed}/base", f"base-{seed}/gate"]
    for r in range(replicates):
        for seed in seeds:
            names += [f"base-{seed}/concepts-r{r}", f"base-{seed}/measurements-r{r}"]
    return [*names, "report"]


STAGE_NAMES = _names(TINY.base_seeds, TINY.replicates)


def test_every_stage_built_once(built: Run) -> None:
    assert TINY.replicates == 2
    assert list(built.results) == STAGE_NAMES
    assert all(result.built for result in built.results.values())
    assert [entry["stage"] for entry in built.cache.log()] == STAGE_NAMES
    assert not list(built.cache.root.glob("*.partial"))
    held_out = load_sample(built.results["world"].folder / "held_out.npz")
    assert held_out.images.shape == (TINY.counts["held_out"], 16, 16, 3)


def test_the_instrument_reads_colour_far_above_chance(built: Run) -> None:
    found = built.results["instrument"].summary["held_out_accuracy"]
    chance = 1 / len(TINY.world.colours)
    assert found["single"]["colour"] > 0.6 > 3 * chance
    assert found["pairs"]["colour"] > 0.6
    instrument = Instrument.load(built.results["instrument"].folder)
    held_out = load_sample(built.results["world"].folder / "held_out.npz")
    assert round(accuracy(instrument, held_out)["colour"], 4) == found["single"]["colour"]
    similarity = instrument.similarity(held_out.images[:4], held_out.images[:4])
    assert np.allclose(np.diag(similarity), 1, atol=1e-5)


def test_the_base_pipeline_loads_offline_and_takes_a_concept(built: Run) -> None:
    pipe = load_base(built)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.tokenizer.model_max_length == 16
    for word in TINY.world.vocabulary():
        assert len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1
    layout = pr.pipeline_layout(pipe)
    assert layout.family == "custom"
    # attn2 in every level but the first: one a down block, two an up block; one in the middle.
    assert len(layout.layers) == 3 * (len(TINY.base.unet_widths) - 1) + 1
    captions = list(load_sample(built.results["world"].folder / "train.npz").captions)
    covariance = pr.build_covariance(pipe, captions)
    template = "a {} on a black background"
    concept = pr.new_concept(
        pipe, token="<stripy>", superclass="star", covariance=covariance, template=template
    )
    handle = pr.apply(pipe, concept)
    image = pipe("a <stripy> on a white background", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
    assert np.isfinite(image).all()
    handle.remove()
    gate = built.results["base-0/gate"].summary["held_out_read_rate"]
    assert set(gate) == {"single", "pairs"}
    assert all(0 <= rate <= 1 for rates in gate.values() for rate in rates.values())


def _stamps(state: Run) -> dict[str, float]:
    return {name: (r.folder / STAMP).stat().st_mtime for name, r in state.results.items()}


def test_a_second_run_reuses_the_cache(built: Run, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    shutil.copytree(built.cache.root, root)  # keeps the files' times; other tests keep theirs
    first = run(root, TINY)
    assert not any(result.built for result in first.results.values())
    assert _stamps(first) == _stamps(built)
    log = first.cache.log()[-len(STAGE_NAMES) :]
    assert [e["action"] for e in log] == ["cached"] * len(STAGE_NAMES)
    # One replicate fewer: every stage is reused and only the pooled report is made again.
    fewer = run(root, replace(TINY, replicates=1))
    assert {name for name, result in fewer.results.items() if result.built} == {"report"}
    assert fewer.results["report"].summary["cells"] == [[0, 0]]
    # A second base seed (from the command line): its base model, gate, concepts and
    # measurements are new, nothing of the first one's is rebuilt.
    before = len(fewer.cache.log())
    arguments = ["--cache", str(root), "--profile", "tiny", "--base-seeds", "0,1"]
    assert main([*arguments, "--replicates", "1"]) == 0
    log = fewer.cache.log()[before:]
    assert {e["stage"] for e in log if e["action"] == "built"} == {
        "base-1/base",
        "base-1/gate",
        "base-1/concepts-r0",
        "base-1/measurements-r0",
        "report",
    }
    again = run(root, replace(TINY, base_seeds=(0, 1), replicates=1))
    assert [name for name, result in again.results.items() if result.built] == []
    assert _stamps(again)["base-0/base"] == _stamps(built)["base-0/base"]
    assert again.results["report"].summary["cells"] == [[0, 0], [1, 0]]
    # Base seed 1 held out (--replication-seeds): nothing is built but the report; the pooled
    # interval rests on base seed 0 alone, and each claim's estimate on base seed 1 is the one
    # it had as a pooled seed, checked against that interval.
    pooled_before = again.results["report"].summary["claims"]
    before = len(again.cache.log())
    held = ["--base-seeds", "0", "--replication-seeds", "1", "--replicates", "1"]
    assert main([*arguments[:4], *held]) == 0
    log = again.cache.log()[before:]
    assert [e["stage"] for e in log if e["action"] == "built"] == ["report"]
    checked = json.loads((root / "report" / "claims.json").read_text())
    assert checked.keys() == pooled_before.keys()
    for name, found in checked.items():
        was = pooled_before[name]["per_seed"]
        assert found["pooled"]["mean"] == pytest.approx(was["0"]["mean"])
        replicated = found["replication"]["1"]
        assert replicated["mean"] == pytest.approx(was["1"]["mean"])
        low, high = found["pooled"]["low"], found["pooled"]["high"]
        assert replicated["inside"] == (low <= replicated["mean"] <= high)
    with pytest.raises(SystemExit):  # a seed cannot be both
        main([*arguments, "--replication-seeds", "1"])
    for betas in ("0.7,0.7", "0,0.7", "1.5", "x"):  # refused before anything is built
        with pytest.raises(SystemExit):
            main([*arguments, "--betas", betas])
    two = load_base(again, 1)
    one = load_base(again, 0)
    weights = [next(iter(p.unet.parameters())).detach().numpy() for p in (one, two)]
    assert not np.array_equal(*weights)  # another pretraining seed, another base model
    # --rebuild STAGE builds that stage and every later one again, the earlier ones not.
    forced = run(root, TINY, until="base", rebuild="autoencoder")
    assert {name for name, result in forced.results.items() if result.built} == {
        "autoencoder",
        "base-0/base",
    }


def test_changed_code_of_a_stage_rebuilds_it(
    built: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage's key holds a digest of its code: an edited measure.py re-measures, and nothing
    else is rebuilt."""
    root = tmp_path / "cache"
    shutil.copytree(built.cache.root, root)
    source, *others = STAGE_CODE["measurements"]
    edited = tmp_path / source.name
    edited.write_text(source.read_text() + "\n# edited\n")
    monkeypatch.setitem(STAGE_CODE, "measurements", (edited, *others))
    kept = run(root, TINY, keep_built=True)  # --keep-built: the change is known not to matter
    assert not any(result.built for result in kept.results.values())
    rerun = run(root, TINY)
    rebuilt = {name for name, result in rerun.results.items() if result.built}
    assert rebuilt == {"base-0/measurements-r0", "base-0/measurements-r1", "report"}
    key = "base-0/measurements-r0"
    assert _stamps(rerun)[key] != _stamps(built)[key]


# --------------------------------------------------------------------------------------------
# Stages 4–5 in miniature
# --------------------------------------------------------------------------------------------


def test_concepts_are_trained_by_pfx_train_from_drawn_images(built: Run) -> None:
    """Each novel object: its training images are draw_novel's, and two concept files — keys
    locked (i_s in the file) and keys learned (key targets) — for the base pipeline, trained
    with the world template and no flips, as the stage's settings say."""
    pipe = load_base(built)
    settings = TINY.concepts
    layers = pr.pipeline_layout(pipe).layers
    first = {}
    for replicate in range(TINY.replicates):
        folder = built.results[f"base-0/concepts-r{replicate}"].folder
        for novel in NOVEL_OBJECTS.values():
            drawn = draw_novel(TINY.world, novel, settings.images)
            files = sorted((folder / novel.name).glob("*.png"))
            drawings = np.stack([np.asarray(Image.open(f)) for f in files])
            assert drawings.tobytes() == drawn.tobytes()
            for variant in VARIANTS:
                concept = pf.load(concept_file(folder, novel, variant))
                assert (concept.token, concept.superclass) == (token(novel), novel.shape)
                assert concept.base_fingerprint == pr.pipeline_fingerprint(pipe, layers)
                assert concept.training["steps"] == settings.steps
                assert concept.training["seed"] == replicate
                assert (concept.training["templates"], concept.training["flip"]) == (1, False)
                assert (concept.key_targets is None) == (variant == "locked")
                assert (concept.superclass_input is None) == (variant != "locked")
                values = np.concatenate([v.ravel() for v in concept.value_targets.values()])
                if replicate == 0:
                    first[(novel.name, variant)] = values
                else:  # another training seed: another concept
                    assert not np.array_equal(values, first[(novel.name, variant)])
        reports = built.results[f"base-0/concepts-r{replicate}"].summary["concepts"]
        assert set(reports) == {f"{n}.{v}" for n in NOVEL_OBJECTS for v in VARIANTS}


def test_alignment_prompts_change_one_attribute_of_the_template() -> None:
    world = World()
    assert prompt(world, "<stripy>") == TEMPLATE.format("<stripy>")
    changed = [prompt(world, "star", change) for change in ALIGNMENT]
    assert changed == [
        "a star on a gray background",
        "a star on a white background",
        "a red star on a black background",
        "a blue star on a black background",
        "a green star on a black background",
    ]
    # the superclass version of each prompt is a caption the world itself writes
    star, black = world.shapes.index("star"), world.names("background").index("black")
    blue = world.names("colour").index("blue")
    assert changed[3] == world.caption([(star, blue)], black)


def test_measurements_keep_one_value_per_image(built: Run) -> None:
    """Each replicate's summary: per image a similarity or a 0/1; replicates differ in noise."""
    images = TINY.measure.images
    names = list(NOVEL_OBJECTS)
    summaries = [built.results[f"base-0/measurements-r{r}"].summary for r in range(2)]
    assert [s["noise_seed"] for s in summaries] == [0, 1]
    summary = summaries[0]
    assert list(summary["fidelity"]) == names
    for name in names:
        fidelity = summary["fidelity"][name]
        assert set(fidelity) == {"training_images", "new_drawings", "superclass", *VARIANTS}
        for key in ("superclass", *VARIANTS):
            assert len(fidelity[key]["similarity"]) == images
            assert all(-1 <= v <= 1 for v in fidelity[key]["similarity"])
            assert set(fidelity[key]["recognised"]) <= {0.0, 1.0}
        sweep = summary["sweep"][name]
        for variant in VARIANTS:
            assert [p["beta"] for p in sweep[variant]] == list(TINY.measure.betas)
            # the table's row is the sweep's point at the files' inference β
            assert sweep[variant][0]["fidelity"] == fidelity[variant]
        aligned = summary["alignment"][name]["locked"]
        assert set(aligned) == {f"{a}:{v}" for a, v in ALIGNMENT}
        assert all(len(v) == images and set(v) <= {0.0, 1.0} for v in aligned.values())
    composition = summary["composition"]
    assert set(composition) == {"superclass", *VARIANTS}
    for row in composition.values():
        assert len(row["both"]) == TINY.measure.composition
        assert all(
            b <= min(lf, r) for b, lf, r in zip(row["both"], row["left"], row["right"], strict=True)
        )
    # the superclass word under another noise seed: other images (another similarity)
    first, second = (s["fidelity"][names[0]]["superclass"]["similarity"] for s in summaries)
    assert first != second


def test_the_report_pools_replicates_with_intervals(built: Run) -> None:
    result = built.results["report"]
    assert result.summary["cells"] == [[0, 0], [0, 1]]
    tables = (result.folder / "tables.md").read_text()
    for title in (
        "**Base models**",
        "**Fidelity**",
        "**Prompt alignment**",
        "**β sweep**",
        "**Composition**",
        "**Claims**",
    ):
        assert title in tables
    # every number cell carries its interval: "0.25 [0.05, 0.70]"
    fidelity = tables.split("**Fidelity**")[1].split("**Prompt alignment**")[0]
    row = next(line for line in fidelity.splitlines() if "keys locked" in line)
    assert len(re.findall(r"-?\d\.\d\d \[-?\d\.\d\d, -?\d\.\d\d\]", row)) == 4
    claims = json.loads((result.folder / "claims.json").read_text())
    assert claims == result.summary["claims"]
    for found in claims.values():
        pooled = found["pooled"]
        assert pooled["low"] <= pooled["mean"] <= pooled["high"]
        assert found["verdict"] in {
            "reproduced",
            "reversed",
            "not resolved at this sample size",
            "consistent with no difference",
            "differs (higher)",
            "differs (lower)",
        }
        assert found["detectable"] >= 0
    # the pooled alignment of a row is its images' share, read independently here
    summaries = [built.results[f"base-0/measurements-r{r}"].summary for r in range(2)]
    values = [
        v
        for s in summaries
        for change in s["alignment"]["stripy"]["locked"].values()
        for v in change
    ]
    alignment = tables.split("**Prompt alignment**")[1].split("**β sweep**")[0]
    row = next(line for line in alignment.splitlines() if "stripy: Perfusion, keys locked" in line)
    assert row.rstrip(" |").split("| ")[-1].startswith(f"{np.mean(values):.2f} [")
    with Image.open(result.folder / "figure.png") as figure:
        assert figure.format == "PNG" and figure.width > 1000
