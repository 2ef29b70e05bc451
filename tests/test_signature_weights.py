"""Issue 16: synthetic writers at scale (the pool and its batches), the shipped signature-pretrained weights (every
file against its model card, loaded into the models it claims), `--weights signatures` / `auto`, and the
pretrain-backbone recipe at its smoke profile."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

from sigverify.data.preprocess import PreprocessConfig, preprocess_file
from sigverify.data.samplers import shuffled_batches, stream_batches, writer_and_forgery_batches
from sigverify.data.synthetic import generate_synthetic_dataset
from sigverify.data.synthetic_pool import WRITERS_PER_BLOCK, pool_folder, synthetic_writer_pool, writer_signatures
from sigverify.errors import ConfigError
from sigverify.models import signature_weights
from sigverify.models.signature_weights import (
    SHIPPED_NAMES,
    WEIGHTS_DIR,
    card_path,
    load_backbone_weights,
    read_shipped,
    shipped_weights,
    write_backbone_weights,
)
from sigverify.pretrain.shipping import MAX_SHIPPED_BYTES, MAX_SHIPPED_TOTAL_BYTES, install_shipped_weights
from tests.conftest import run_experiment_script

SMALL = PreprocessConfig((32, 32))


def test_pool_images_are_the_generators_writers_preprocessed(tmp_path):
    """Writer w of the pool is writer w + 1 of generate_synthetic_dataset with the pool's seed, preprocessed like a
    file: the same signatures without the PNG files, genuine then forgeries, labelled w and w + n_writers."""
    pool = synthetic_writer_pool(3, 2, SMALL, tmp_path / "cache", processes=1)
    assert pool.images.shape == (3 * 4, 32, 32) and pool.images.dtype == np.uint8
    assert pool.labels.tolist() == [0, 0, 3, 3, 1, 1, 4, 4, 2, 2, 5, 5]
    folder = generate_synthetic_dataset(tmp_path / "files", n_writers=3, n_samples=2, seed=pool.seed, progress=False)
    from_files = [preprocess_file(folder / sub / f"{kind}_{writer}_{sample}.png", SMALL)
                  for writer in (1, 2, 3) for sub, kind in (("full_org", "original"), ("full_forg", "forgeries"))
                  for sample in (1, 2)]
    np.testing.assert_array_equal(pool.images, np.stack(from_files))


def test_pool_blocks_are_reused_resumed_and_checked(tmp_path):
    """A bigger pool reuses the blocks of a smaller one; a missing block is generated again, identical (on worker
    processes); a block of another shape is refused, naming the file."""
    cache = tmp_path / "cache"
    small = synthetic_writer_pool(WRITERS_PER_BLOCK - 1, 1, SMALL, cache, processes=1)
    folder = pool_folder(cache, 1, SMALL)
    first_block = folder / "writers-000000.npy"
    written = first_block.stat().st_mtime_ns
    big = synthetic_writer_pool(WRITERS_PER_BLOCK + 1, 1, SMALL, cache, processes=2)
    assert first_block.stat().st_mtime_ns == written  # reused, not regenerated
    np.testing.assert_array_equal(big.images[:len(small.images)], small.images)
    np.testing.assert_array_equal(big.images[-2:], writer_signatures(WRITERS_PER_BLOCK + 1, 1, SMALL))

    first_block.unlink()
    again = synthetic_writer_pool(WRITERS_PER_BLOCK + 1, 1, SMALL, cache, processes=2)
    np.testing.assert_array_equal(again.images, big.images)
    assert not list(folder.glob(".*tmp*"))

    np.save(first_block, np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ConfigError, match="writers-000000.npy: holds"):
        synthetic_writer_pool(2, 1, SMALL, cache, processes=1)


def test_writer_batches_hold_each_writers_genuine_and_forged_classes():
    n_writers, samples, k = 6, 5, 2
    labels = np.concatenate([np.r_[np.full(samples, w), np.full(samples, w + n_writers)] for w in range(n_writers)])
    batches = writer_and_forgery_batches(labels, n_writers, 3, k, seed=4, epoch=1, n_batches=7)
    assert batches.shape == (7, 3 * 2 * k)
    for batch in batches:
        assert len(set(batch.tolist())) == len(batch)  # K distinct images of each class
        classes = labels[batch].reshape(-1, k)
        assert (classes == classes[:, :1]).all()
        genuine, forged = classes[0::2, 0], classes[1::2, 0]
        assert (genuine < n_writers).all() and (forged == genuine + n_writers).all()
        assert len(set(genuine.tolist())) == 3
    np.testing.assert_array_equal(batches, writer_and_forgery_batches(labels, n_writers, 3, k, 4, 1, 7))
    assert not np.array_equal(batches, writer_and_forgery_batches(labels, n_writers, 3, k, 4, 2, 7))
    with pytest.raises(ConfigError, match="at least K=6"):
        writer_and_forgery_batches(labels, n_writers, 3, 6, 4, 1, 7)


def test_stream_batches_split_passes_into_shorter_epochs():
    """SimCLR on a large pool with --pretrain-steps-per-epoch: each epoch continues the stream of shuffled passes, so
    every image comes once a pass whatever the epoch length, and an epoch's batches are the same when drawn again."""
    n_images, batch = 23, 4  # 5 batches a pass (3 images dropped, as one epoch a pass drops them)
    epochs = [stream_batches(n_images, batch, seed=3, epoch=e, steps_per_epoch=3) for e in range(4)]
    assert all(e.shape == (3, batch) for e in epochs)
    stream = np.concatenate(epochs)
    np.testing.assert_array_equal(stream[:5], shuffled_batches(n_images, batch, 3, 0))
    np.testing.assert_array_equal(stream[5:10], shuffled_batches(n_images, batch, 3, 1))
    assert len(set(stream[:5].ravel().tolist())) == 20
    np.testing.assert_array_equal(epochs[2], stream_batches(n_images, batch, 3, 2, 3))
    assert stream_batches(n_images, batch, 3, 0, 12).shape == (12, batch)  # epochs longer than a pass too


def _cut_resnet(cut_layer: str, size: int = 32, weights=None):
    from sigverify.models.weights import build_cut_backbone

    return build_cut_backbone("resnet50", cut_layer, size, weights=weights)


def test_float16_file_round_trip_into_earlier_and_later_cuts(tmp_path):
    """The file holds every layer up to its cut in float16; a model cut earlier takes the layers it has, one cut later
    keeps its later layers; a model with other shapes is refused."""
    trained = _cut_resnet("conv3_block1_out")
    path = tmp_path / "b.h5"
    sha256 = write_backbone_weights(trained, "resnet50", "conv3_block1_out", path)
    assert len(sha256) == 64 and not list(tmp_path.glob(".*tmp"))

    earlier = _cut_resnet("conv2_block3_out")
    assert load_backbone_weights(earlier, path) == sum(1 for layer in earlier.layers if layer.weights)
    later = _cut_resnet("conv3_block2_out")
    untouched = later.get_layer("conv3_block2_1_conv").get_weights()[0].copy()
    load_backbone_weights(later, path)
    for name in ("conv1_conv", "conv2_block1_1_bn", "conv3_block1_0_conv"):
        for loaded, original in zip(later.get_layer(name).get_weights(), trained.get_layer(name).get_weights()):
            np.testing.assert_array_equal(loaded, original.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(later.get_layer("conv3_block2_1_conv").get_weights()[0], untouched)

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="conv1_conv")])
    with pytest.raises(ConfigError, match="layer conv1_conv of .*b.h5 has shapes"):
        load_backbone_weights(other, path)


def test_a_file_that_does_not_match_its_card_is_refused(tmp_path):
    trained = _cut_resnet("conv2_block1_out")
    path = tmp_path / "resnet50-signatures.h5"
    sha256 = write_backbone_weights(trained, "resnet50", "conv2_block1_out", path)
    card_path(path).write_text(json.dumps({"sha256": sha256, "backbone": "resnet50", "cut_layer": "conv2_block1_out"}))
    assert read_shipped(path).sha256 == sha256
    with open(path, "r+b") as file:
        file.seek(path.stat().st_size // 2)
        file.write(b"\x00\x01\x02\x03")
    with pytest.raises(ConfigError, match="resnet50-signatures.h5 does not match its model card"):
        read_shipped(path)
    card_path(path).unlink()
    with pytest.raises(ConfigError, match="has no model card"):
        read_shipped(path)


@pytest.mark.parametrize("backbone", sorted(SHIPPED_NAMES))
def test_every_shipped_file_matches_its_card_and_loads_into_the_models_it_claims(backbone):
    """The package's files: sha256 as the card says, at most 20 MB, loaded into every zoo model of the backbone (its
    layers up to the card's cut equal the file's)."""
    import h5py

    from sigverify.models.zoo import MODEL_ZOO, build_zoo_model

    shipped = shipped_weights(backbone)
    assert shipped is not None, f"no shipped weights for {backbone} in {WEIGHTS_DIR}"
    assert shipped.path.stat().st_size <= MAX_SHIPPED_BYTES and shipped.card["bytes"] == shipped.path.stat().st_size
    for key in ("data", "recipe", "reproduce", "figures", "sha256"):
        assert shipped.card[key], key
    assert (WEIGHTS_DIR / f"{SHIPPED_NAMES[backbone]}.md").read_text().count(shipped.sha256) == 1
    claimed = [name for name, entry in MODEL_ZOO.items() if entry.backbone == backbone]
    assert claimed, "the zoo has no model of this backbone"
    with h5py.File(shipped.path, "r") as file:
        reference = {name: [group[str(i)][()] for i in range(len(group))] for name, group in file.items()}
    for name in claimed:
        model = build_zoo_model(name, 128, weights="signatures")  # 128: the full ResNet50 head needs 97 px
        compared = 0
        for layer in _all_layers(model):
            if layer.name in reference:
                for loaded, stored in zip(layer.get_weights(), reference[layer.name]):
                    np.testing.assert_array_equal(loaded, stored.astype(np.float32))
                compared += 1
        assert compared > 0, name


def test_the_shipped_files_hold_at_most_40_mb_in_all():
    assert sum(path.stat().st_size for path in WEIGHTS_DIR.glob("*.h5")) <= MAX_SHIPPED_TOTAL_BYTES


def _all_layers(model):
    """The layers of `model` and of the models nested in it (the contrastive model holds its backbone as one layer)."""
    for layer in model.layers:
        yield from _all_layers(layer) if isinstance(layer, keras.Model) else [layer]


def test_signatures_and_auto_starts(monkeypatch, tmp_path):
    """`signatures` names the shipped file and its sha256; `auto` takes it where ImageNet cannot be loaded, and random
    initialisation where the package ships nothing for the backbone; a backbone without shipped weights is refused."""
    from sigverify.models import weights

    monkeypatch.setattr(weights, "_imagenet_download_error", lambda backbone: "URL fetch failure (test)")
    trained = _cut_resnet("conv2_block1_out")
    path = tmp_path / "resnet50-signatures.h5"
    sha256 = write_backbone_weights(trained, "resnet50", "conv2_block1_out", path)
    card_path(path).write_text(json.dumps({"sha256": sha256, "backbone": "resnet50", "cut_layer": "conv2_block1_out"}))
    monkeypatch.setattr(signature_weights, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(weights, "shipped_weights", lambda backbone: shipped_weights(backbone, tmp_path))

    argument, description = weights.resolve_weights("signatures", "resnet50")
    assert argument == "signatures" and sha256[:12] in description and "resnet50-signatures.h5" in description
    argument, description = weights.resolve_weights("auto", "resnet50")
    assert argument == "signatures" and "requested via auto" in description and "URL fetch failure" in description
    with pytest.raises(ConfigError, match="no signature-pretrained weights are shipped for vgg16"):
        weights.resolve_weights("signatures", "vgg16")
    with pytest.warns(UserWarning, match="random initialisation"):
        assert weights.resolve_weights("auto", "vgg16")[0] is None

    model = _cut_resnet("conv2_block2_out", weights="signatures")
    np.testing.assert_array_equal(model.get_layer("conv1_conv").get_weights()[0],
                                  trained.get_layer("conv1_conv").get_weights()[0].astype(np.float16)
                                  .astype(np.float32))

    # --unfreeze-from: a pretrained start keeps its earlier layers frozen; a random start trains every layer
    from sigverify.models.zoo import embedding_model_from_settings
    from sigverify.settings import ModelSettings

    settings = ModelSettings(cut_layer="conv3_block1_out", weights="signatures", unfreeze_from="conv2_block3_1_conv",
                             embedding_dim=8)
    fine_tuned, _, description, pretrained = embedding_model_from_settings(settings, 32)
    trainable = {layer.name: layer.trainable for layer in fine_tuned.layers}
    assert not trainable["conv1_conv"] and not trainable["conv2_block2_out"]
    assert trainable["conv2_block3_1_conv"] and trainable["conv3_block1_0_conv"]
    assert "layers before conv2_block3_1_conv frozen" in description
    # the pretrained layers (for --backbone-rate-scale): the unfrozen backbone's, not the head's
    head = {id(v) for name in ("head_conv1", "head_conv2", "embedding") for v in fine_tuned.get_layer(name).weights}
    assert pretrained and not head & {id(v) for v in pretrained}
    assert {id(v) for v in pretrained} | head == {id(v) for v in fine_tuned.trainable_variables}
    settings.weights = "none"
    from_random, _, description, pretrained = embedding_model_from_settings(settings, 32)
    assert all(layer.trainable for layer in from_random.layers) and "a random start trains every layer" in description
    assert pretrained == []
    settings.weights, settings.unfreeze_from = "signatures", "conv3_block2_1_conv"
    with pytest.raises(ConfigError, match="after the cut layer conv3_block1_out"):
        embedding_model_from_settings(settings, 32)


def test_pretrain_backbone_smoke_writes_shipped_files_that_install(tmp_path):
    """make pretrain-backbone PROFILE=smoke: the run folder's shipped/ holds the float16 file, its card (sha256 of the
    file, the recipe, the frozen figures, the float16 loss) and the Markdown card; `sigverify weights install` copies
    them."""
    result = run_experiment_script("pretrain_backbone.py", "--profile", "smoke", "--runs", tmp_path / "runs",
                                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    run = (tmp_path / "runs" / "pretrain-backbone" / "latest").resolve()
    shipped = read_shipped(run / "shipped" / "resnet50-signatures.h5")
    card = shipped.card
    assert card["cut_layer"] == "conv4_block6_add" and card["recipe"]["epochs"] == 2
    assert "synthetic only" in card["data"] and "8 writers" in card["data"]
    assert card["float16_loss"]["min_cosine_similarity"] > 0.999
    assert set(next(iter(card["figures"].values()))) == {"skilled forgeries", "random forgeries"}
    assert "make pretrain-backbone PROFILE=smoke" in card["reproduce"]
    installed = install_shipped_weights(run, tmp_path / "package-weights")
    assert sorted(path.name for path in installed) == ["resnet50-signatures.card.json", "resnet50-signatures.h5",
                                                       "resnet50-signatures.md"]
    assert shipped_weights("resnet50", tmp_path / "package-weights").sha256 == shipped.sha256

    # a second stage from the first run: its card keeps the first stage and repeats its command before its own
    result = run_experiment_script("pretrain_backbone.py", "--profile", "smoke", "--weights", run, "--runs",
                                   tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    second_run = (tmp_path / "runs" / "pretrain-backbone" / "latest").resolve()
    second = read_shipped(second_run / "shipped" / "resnet50-signatures.h5").card
    assert second["sha256"] != card["sha256"] and str(run) in second["recipe"]["start"]
    assert second["earlier_stages"] == [{key: card[key] for key in ("sha256", "data", "recipe", "run")}]
    first_commands = card["reproduce"].removesuffix(" && make ship-weights RUN=runs/pretrain-backbone/<run id>")
    assert second["reproduce"] == (
        f'{first_commands} && make pretrain-backbone PROFILE=smoke ARGS="--weights runs/pretrain-backbone/<stage 1 '
        'run id>" && make ship-weights RUN=runs/pretrain-backbone/<run id>')
    markdown = (second_run / "shipped" / "resnet50-signatures.md").read_text()
    assert "## Recipe (stage 2 of 2)" in markdown and "## Stage 1 of 2" in markdown
    assert markdown.count(card["sha256"]) == 1 and markdown.count(second["sha256"]) == 1
    full = tmp_path / "full-package-weights"
    full.mkdir()
    with open(full / "vgg16-signatures.h5", "wb") as other:  # sparse: 39.5 MB on paper, nothing on disk
        other.truncate(MAX_SHIPPED_TOTAL_BYTES - MAX_SHIPPED_BYTES // 40)
    with pytest.raises(ConfigError, match=r"resnet50-signatures.h5 would bring .* with vgg16-signatures.h5, more than the "
                                          r"40 MB"):
        install_shipped_weights(run, full)
    assert [path.name for path in full.iterdir()] == ["vgg16-signatures.h5"], "a refused install copies nothing"
    shutil.rmtree(run / "shipped")
    with pytest.raises(ConfigError, match="no shipped weights"):
        install_shipped_weights(run, tmp_path / "elsewhere")


def test_ship_weights_refuses_a_file_over_20_mb_and_copies_nothing(tmp_path):
    shipped = tmp_path / "run" / "shipped"
    shipped.mkdir(parents=True)
    with open(shipped / "resnet50-signatures.h5", "wb") as oversized:  # sparse
        oversized.truncate(MAX_SHIPPED_BYTES + 1)
    with pytest.raises(ConfigError, match="resnet50-signatures.h5 over the 20 MB a shipped file may hold"):
        install_shipped_weights(tmp_path / "run", tmp_path / "package-weights")
    assert not (tmp_path / "package-weights").exists()


def test_pretrain_backbone_settings_are_checked_before_any_work():
    """Its profiles are its own (no blog: a profile an experiment lacks is refused, not run at the defaults), and the
    method is fixed."""
    from sigverify.settings import build_config
    from tests.conftest import load_recipe

    profiles = load_recipe("pretrain_backbone").PROFILES
    with pytest.raises(ConfigError, match="unknown profile 'blog': expected one of smoke, quick, full"):
        build_config("pretrain-backbone", "blog", profiles)
    with pytest.raises(ConfigError, match="--method: the pretrain-backbone experiment sets it itself"):
        build_config("pretrain-backbone", "smoke", profiles, {"pretrain": {"method": "simclr"}})
    config = build_config("pretrain-backbone", "full", profiles)
    assert (config.pretrain.method, config.pretrain.unlabelled, config.pretrain.synthetic_writers,
            config.model.cut_layer) == ("simclr", "synthetic", 5000, "conv4_block6_add")


def test_the_reproducing_command_names_a_start_without_a_card():
    """A start that is not an earlier stage's file (a weights file, ImageNet) is passed on as it was given; the default
    (random) start needs no flag."""
    from sigverify.pretrain.shipping import reproducing_command
    from sigverify.settings import build_config
    from tests.conftest import load_recipe

    profiles = load_recipe("pretrain_backbone").PROFILES
    full = build_config("pretrain-backbone", "full", profiles)
    config = build_config("pretrain-backbone", "full", profiles, {"model": {"weights": "imagenet"}})
    assert reproducing_command(config, full) == ('make pretrain-backbone PROFILE=full ARGS="--weights imagenet" && '
                                                 'make ship-weights RUN=runs/pretrain-backbone/<run id>')
    assert "ARGS" not in reproducing_command(full, full)


def test_the_reproducing_command_gives_the_settings_the_profile_does_not():
    """A file trained with settings of its own (another backbone, fewer steps) is reproduced with them, as flags."""
    from sigverify.pretrain.shipping import reproducing_command
    from sigverify.settings import build_config
    from tests.conftest import load_recipe

    profiles = load_recipe("pretrain_backbone").PROFILES
    config = build_config("pretrain-backbone", "full", profiles, {
        "model": {"backbone": "vgg16", "cut_layer": "block3_conv1"}, "image": {"binarize": False},
        "pretrain": {"pretrain_steps_per_epoch": 150}})
    assert reproducing_command(config, build_config("pretrain-backbone", "full", profiles)) == (
        'make pretrain-backbone PROFILE=full ARGS="--no-binarize --backbone vgg16 --cut-layer block3_conv1 '
        '--pretrain-steps-per-epoch 150" && make ship-weights RUN=runs/pretrain-backbone/<run id>')
