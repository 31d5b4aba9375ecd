"""Params are validated before any work; each bad value is one line naming key, value and allowed range."""

import copy
import os
import subprocess
import sys

import pytest
import yaml

from dmr_core.params import ParamsError, load_params, parse_params
from helpers import DEFAULTS, ROOT, project_pythonpath


def with_value(section: str, key: str, value):
    raw = copy.deepcopy(DEFAULTS)
    raw[section][key] = value
    return raw


def test_defaults_are_valid():
    params = parse_params(DEFAULTS)
    assert params.synth.k == 2 and params.synth.method == "dmr_mlm" and params.synth.detail == "residual_dmr"


@pytest.mark.parametrize("section,key,value,expected", [
    ("synth", "k", 0, r"synth\.k = 0: .*greater than or equal to 1"),
    ("synth", "lambda_min", 0.0, r"synth\.lambda_min = 0\.0: .*greater than 0"),
    ("synth", "lambda_max", -1.0, r"synth\.lambda_max = -1\.0: .*greater than 0"),
    ("synth", "lambda_min", 1000.0, r"synth\.lambda_min = 1000\.0 > synth\.lambda_max = \d"),
    ("synth_baselines", "lambda_min", 4.0, r"synth_baselines\.lambda_min = 4\.0 > synth_baselines\.lambda_max = 3\.0"),
    ("synth_baselines", "variants", ["gan"], r"synth_baselines\.variants\.0 = 'gan'"),
    ("baselines", "detectors", ["MSP", "Foo"], r"baselines\.detectors\.1 = 'Foo'"),
    ("synth", "k", 11, r"synth\.k = 11: at most the number of ID classes, 10 \(data\.id_set = 'cifar10'\)"),
    ("synth", "num_samples", -5, r"synth\.num_samples = -5: .*greater than or equal to 1"),
    ("synth", "method", "magic", r"synth\.method = 'magic': .*'mlm', 'dmr' or 'dmr_mlm'"),
    ("synth", "lambda_dist", "normal", r"synth\.lambda_dist = 'normal'"),
    ("classifier", "arch", "resnet18", r"classifier\.arch = 'resnet18': .*resnet20"),
    ("data", "ood_sets", ["icons", "mnist"], r"data\.ood_sets = \['icons', 'mnist'\]: unknown OOD set 'mnist'"),
    ("data", "ood_sets", "everything", r"data\.ood_sets = 'everything': not a suite: use one of auto, offline, paper"),
    ("data", "id_set", "imagenet", r"data\.id_set = 'imagenet': unknown ID set 'imagenet'"),
    ("data", "train_per_class", -1, r"data\.train_per_class = -1"),
    ("head", "batch_size", 0, r"head\.batch_size = 0"),
    ("head", "feature", "pixels", r"head\.feature = 'pixels'"),
    ("generator", "kind", "stylegan", r"generator\.kind = 'stylegan'"),
])
def test_bad_values_are_named(section, key, value, expected):
    with pytest.raises(ParamsError, match=expected) as info:
        parse_params(with_value(section, key, value))
    assert "\n" not in str(info.value)


def test_dmr_single_needs_k_1():
    raw = with_value("synth", "method", "dmr")
    with pytest.raises(ParamsError, match=r"synth\.k = 2 with synth\.method = 'dmr'"):
        parse_params(raw)
    raw["synth"]["k"] = 1
    assert parse_params(raw).synth.k == 1


def test_missing_and_unknown_keys():
    raw = copy.deepcopy(DEFAULTS)
    del raw["head"]["epochs"]
    with pytest.raises(ParamsError, match=r"head\.epochs: missing key"):
        parse_params(raw)
    raw = with_value("synth", "lamda_max", 2)
    with pytest.raises(ParamsError, match=r"synth\.lamda_max: unknown key"):
        parse_params(raw)
    raw = copy.deepcopy(DEFAULTS)
    del raw["eval"]
    with pytest.raises(ParamsError, match=r"^invalid params: eval: missing key"):
        parse_params(raw)


def test_unreadable_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("synth: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_stage_fails_before_work_with_one_line(tmp_path):
    """A stage run with a bad param exits 1 with a one-line message and writes nothing."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("synth", "k", 11)))
    command = [sys.executable, "-m", "stages.data", "--out", "data/datasets", "--metrics", "metrics/data.json"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": project_pythonpath(),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        ("error in stage data: invalid params: synth.k = 11: at most the number of ID classes, 10 (data.id_set = "
         "'cifar10'), as the k mixed latents or images come from k distinct classes; lower it")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_detail_fraction_must_be_a_share():
    raw = yaml.safe_load(yaml.safe_dump(DEFAULTS))
    raw["synth"]["detail_fraction"] = 0
    with pytest.raises(ParamsError, match=r"synth\.detail_fraction = 0: .*greater than 0"):
        parse_params(raw)
    raw["synth"]["detail_fraction"] = 1.5
    with pytest.raises(ParamsError, match=r"synth\.detail_fraction = 1\.5: .*less than or equal to 1"):
        parse_params(raw)


@pytest.mark.parametrize("term", ["adversarial", "perceptual"])
def test_generator_term_must_start_before_the_last_epoch(term):
    raw = copy.deepcopy(DEFAULTS)
    epochs = raw["generator"]["epochs"]
    raw["generator"].update({f"{term}_weight": 1.0, f"{term}_start_epoch": epochs})
    with pytest.raises(ParamsError, match=f"generator.{term}_start_epoch = {epochs} with generator.epochs = {epochs}: the {term} term"):
        parse_params(raw)
    raw["generator"][f"{term}_weight"] = 0.0  # off: the start epoch does not matter
    parse_params(raw)


def test_spatial_latent_must_fill_the_grid():
    raw = copy.deepcopy(DEFAULTS)
    raw["generator"].update({"kind": "spatial_vae", "latent_dim": 100})
    with pytest.raises(ParamsError, match="generator.latent_dim = 100 with generator.kind = spatial_vae and "
                                          "data.image_size = 32: .*4×4 grid.*multiple of 16"):
        parse_params(raw)
    raw["generator"]["latent_dim"] = 256
    parse_params(raw)
    raw["data"]["image_size"] = 48  # a 6×6 grid: 256 channels-times-cells no longer fill it
    with pytest.raises(ParamsError, match="data.image_size = 48: .*6×6 grid.*multiple of 36"):
        parse_params(raw)
    raw["generator"]["latent_dim"] = 288
    parse_params(raw)


@pytest.mark.parametrize("size", [31, 33, 100, 250])
def test_image_size_the_nets_cannot_build_is_one_line(size):
    raw = copy.deepcopy(DEFAULTS)
    raw["data"]["image_size"] = size
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    message = str(err.value)
    assert message.startswith(f"invalid params: data.image_size = {size}: ") and "\n" not in message
    assert "32, 40, 48" in message or "greater than or equal to 32" in message or "less than or equal" in message


def test_image_size_held_whole_beyond_memory_is_refused(monkeypatch):
    import dmr_core.params as params_module

    raw = copy.deepcopy(DEFAULTS)
    raw["data"]["image_size"] = 224
    monkeypatch.setattr(params_module, "memory_size", lambda: 4 * 2**30)  # 50,000 × 224² × 3 bytes is 7 GiB
    with pytest.raises(ParamsError, match=r"data.image_size = 224: the stages hold the ID training set whole, "
                                          r"50,000 images .* = 7\.0 GiB, and this machine has 4\.0 GiB"):
        parse_params(raw)
    raw["data"]["train_per_class"] = 500
    raw["synth_baselines"]["num_samples"] = 5000
    parse_params(raw)


def test_a_batch_of_images_is_costed_at_the_run_s_image_size(monkeypatch):
    """classifier.batch_size 10,000 is 117 MiB of float32 images at 32 px but 5.6 GiB at 224 px: refused there in
    one line naming both keys, on a machine of 1 GiB."""
    import dmr_core.params as params_module

    raw = copy.deepcopy(DEFAULTS)
    raw["data"]["train_per_class"] = 20
    raw["baselines"]["reference_images"] = 100
    raw["classifier"]["batch_size"] = 10_000
    monkeypatch.setattr(params_module, "memory_size", lambda: 2**30)
    parse_params(raw)
    raw["data"]["image_size"] = 224
    with pytest.raises(ParamsError, match=r"classifier\.batch_size = 10000 with data\.image_size = 224: needs at "
                                          r"least 5\.6 GiB of memory \(588\.0 KiB for each, a float32 224×224×3 "
                                          r"image of the batch\) and this machine has 1\.0 GiB; lower it or "
                                          r"data\.image_size"):
        parse_params(raw)


def test_input_size_is_for_torchvision_models_only():
    raw = copy.deepcopy(DEFAULTS)
    raw["classifier"]["input_size"] = 64
    with pytest.raises(ParamsError, match="classifier.input_size = 64 with classifier.arch = 'resnet20': only a "
                                          "torchvision model resizes its input"):
        parse_params(raw)


def test_a_torchvision_model_too_deep_for_the_image_size_is_one_line():
    raw = copy.deepcopy(DEFAULTS)
    raw["classifier"].update({"arch": "torchvision:alexnet", "init": "scratch"})
    # alexnet's default feature map (its adaptive pooling) does not pool into its classification layer
    raw["baselines"]["detectors"] = ["MSP", "KNN"]
    raw["synth_baselines"]["variants"] = ["mlm"]
    with pytest.raises(ParamsError, match=r"classifier.arch = 'torchvision:alexnet' cannot take 32×32 images "
                                          r"\(data.image_size = 32, classifier.input_size = 'auto'"):
        parse_params(raw)
    raw["classifier"]["input_size"] = 224
    parse_params(raw)


def test_cross_section_rules_are_validated():
    """combine.detector must be among the scored detectors: `dmr check-params` says so, not the combine stage."""
    raw = with_value("baselines", "detectors", ["MSP", "Energy"])
    with pytest.raises(ParamsError, match=r"combine\.detector = 'KNN' is not among baselines\.detectors"):
        parse_params(raw)
    raw["combine"]["detector"] = "none"
    assert parse_params(raw).combine.detector == "none"


def test_sections_build_the_library_configs():
    from dmr_core.training.head import HeadConfig

    params = parse_params(DEFAULTS)
    config = params.head.to(HeadConfig)
    assert config.hidden == DEFAULTS["head"]["hidden"] and config.input_dropout == DEFAULTS["head"]["input_dropout"]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("section,key", [("synth", "lambda_max"), ("head", "lr"), ("baselines", "odin_temperature")])
def test_floats_must_be_finite(section, key, value):
    with pytest.raises(ParamsError, match=rf"^invalid params: {section}\.{key} = {value}: Input should be a finite"):
        parse_params(with_value(section, key, value))


def test_yaml_infinity_is_refused_when_loading(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace("lambda_max: 40.0",
                                                                                     "lambda_max: .inf"))
    with pytest.raises(ParamsError, match=r"synth\.lambda_max = inf: Input should be a finite number"):
        load_params(tmp_path / "params.yaml")


def test_penultimate_size_is_read_off_the_architecture_table():
    from dmr_core.nets.classifier import ARCHITECTURES, build_classifier
    from dmr_core.params import penultimate_size

    assert {arch: penultimate_size(arch) for arch in ARCHITECTURES} == {
        "resnet20": 64, "resnet32": 64, "resnet44": 64, "resnet56": 64, "wrn40_2": 128, "densenet100_bc": 342,
        "resnet50": 2048, "densenet121": 1024}
    assert penultimate_size("wrn40_2") == build_classifier("wrn40_2").classifier_head().in_features
    # independent of the class count the classifier is built with
    assert penultimate_size("wrn40_2") == build_classifier("wrn40_2", num_classes=3).classifier_head().in_features
    assert penultimate_size("torchvision:mobilenet_v3_small") == 1024


def test_vim_dim_must_be_below_the_penultimate_size():
    with pytest.raises(ParamsError) as info:
        parse_params(with_value("baselines", "vim_dim", 64))
    assert str(info.value).startswith(
        "invalid params: baselines.vim_dim = 64: must be below the penultimate size of resnet20 (64)")
    raw = with_value("baselines", "vim_dim", 127)
    raw["classifier"].update(arch="wrn40_2", init="scratch")
    assert parse_params(raw).baselines.vim_dim == 127
    raw["baselines"]["vim_dim"] = 128
    with pytest.raises(ParamsError, match=r"vim_dim = 128: must be below the penultimate size of wrn40_2 \(128\)"):
        parse_params(raw)


@pytest.mark.parametrize("key", ["knn_k", "reference_images"])
def test_bounded_by_the_training_images(key):
    raw = copy.deepcopy(DEFAULTS)
    raw["data"]["train_per_class"] = 20
    raw["baselines"].update(knn_k=10, reference_images=100)
    raw["synth_baselines"]["num_samples"] = 100
    raw["baselines"][key] = 200
    assert getattr(parse_params(raw).baselines, key) == 200
    raw["baselines"][key] = 201
    with pytest.raises(ParamsError, match=rf"baselines\.{key} = 201: must be at most the number of ID training "
                                          r"images, 200 \(data\.train_per_class = 20 × 10 classes\)"):
        parse_params(raw)
    raw["data"]["train_per_class"] = 0  # the whole split
    assert getattr(parse_params(raw).baselines, key) == 201
    raw["baselines"][key] = 50001
    with pytest.raises(ParamsError, match=r"at most the number of ID training images, 50,000 \(all 50,000 of "
                                          r"cifar10's training split"):
        parse_params(raw)


@pytest.mark.parametrize("id_set,key,limit", [("cifar10", "train_per_class", 5000), ("cifar10", "test_per_class", 1000),
                                              ("cifar100", "train_per_class", 500), ("cifar100", "test_per_class", 100)])
def test_per_class_counts_are_bounded_by_the_id_set(id_set, key, limit):
    raw = with_value("data", "id_set", id_set)
    raw["data"][key] = limit
    assert getattr(parse_params(raw).data, key) == limit
    raw["data"][key] = limit + 1
    split = key.split("_")[0]
    with pytest.raises(ParamsError, match=rf"data\.{key} = {limit + 1}: {id_set}'s smallest class has {limit:,} "
                                          rf"{split} images"):
        parse_params(raw)


def test_kirby_cannot_edit_more_images_than_there_are():
    raw = copy.deepcopy(DEFAULTS)
    raw["data"]["train_per_class"] = 20
    raw["baselines"]["reference_images"] = 100
    raw["synth_baselines"]["num_samples"] = 201
    with pytest.raises(ParamsError, match=r"synth_baselines\.num_samples = 201 with kirby, dmr_kirby, "
                                          r"saliency_shuffle in synth_baselines\.variants: must be at most .* 200"):
        parse_params(raw)
    raw["synth_baselines"]["variants"] = ["mlm", "mim"]  # these sample with replacement
    assert parse_params(raw).synth_baselines.num_samples == 201


def test_auto_synthesis_counts_fit_any_data_as_written():
    """The default (auto) passes on a set far smaller than synth.num_samples (the attach walkthrough on 5,522
    photos stopped here), and each variant then makes as many images as DMR's head sees, KIRBY and the other
    training-image editors no more than there are training images."""
    from dmr_core.synthesis.variants import variant_sample_count

    raw = copy.deepcopy(DEFAULTS)
    raw["data"]["train_per_class"] = 20
    raw["baselines"]["reference_images"] = 100
    assert parse_params(raw).synth_baselines.num_samples == "auto"
    assert variant_sample_count("kirby", "auto", 25000, 200) == 200
    assert variant_sample_count("saliency_shuffle", "auto", 25000, 5522) == 5522
    assert variant_sample_count("mim", "auto", 25000, 200) == 25000
    assert variant_sample_count("kirby", "auto", 25000, 50000) == 25000  # the default CIFAR-10 run, as before
    assert variant_sample_count("kirby", 300, 25000, 50000) == 300


def test_perceptual_images_come_from_one_batch():
    raw = copy.deepcopy(DEFAULTS)
    raw["generator"].update(perceptual_images=129, batch_size=128)
    parse_params(raw)  # the perceptual term is off: the key is unused
    raw["generator"]["perceptual_weight"] = 1.0
    with pytest.raises(ParamsError, match=r"generator\.perceptual_images = 129 with generator\.batch_size = 128"):
        parse_params(raw)


@pytest.mark.parametrize("section,key", [("data", "ood_sets"), ("baselines", "detectors"),
                                         ("synth_baselines", "variants")])
def test_list_items_are_named_once(section, key):
    items = DEFAULTS[section][key]
    with pytest.raises(ParamsError) as info:
        parse_params(with_value(section, key, [*items, items[0]]))
    assert str(info.value).endswith(f": {items[0]!r} is listed twice; list each item once")
    assert str(info.value).startswith(f"invalid params: {section}.{key} = ")


def test_combine_detector_names_only_its_key():
    with pytest.raises(ParamsError, match=r"^invalid params: combine\.detector = 'Foo': Input should be 'MSP'"):
        parse_params(with_value("combine", "detector", "Foo"))


def test_seeds_and_booleans():
    with pytest.raises(ParamsError, match=r"synth\.seed = 4294967296: .*\(a seed is an integer in \[0, 4294967295\]"):
        parse_params(with_value("synth", "seed", 2**32))
    assert parse_params(with_value("synth", "seed", 2**32 - 1)).synth.seed == 2**32 - 1
    with pytest.raises(ParamsError, match=r"head\.epochs = True: a number is needed here, not true/false"):
        parse_params(with_value("head", "epochs", True))


def test_pretrained_needs_published_weights():
    from dmr_core.nets.classifier import PRETRAINED_FILES

    assert "wrn40_2" not in PRETRAINED_FILES
    with pytest.raises(ParamsError, match=r"classifier\.init = 'pretrained' with classifier\.arch = 'wrn40_2'"):
        parse_params(with_value("classifier", "arch", "wrn40_2"))


@pytest.mark.parametrize("content,expected", [
    (b"synth: {k: 2\xff}\n", r"is not UTF-8 text \(byte 0xff at offset 12\); save it as UTF-8"),
    (b"", r"is empty; start from the default params.yaml"),
    (b"# only a comment\n", r"is empty"),
    (b"- data\n- synth\n", r"holds a list, not a mapping of sections"),
    (b"42\n", r"holds a int, not a mapping"),
    (b"synth: [unclosed\n", r"is not valid YAML: expected ',' or '\]', but got '<stream end>' \(line 2, column 1\)$"),
    (b"data: {}\ndata: {}\n", r"is not valid YAML: key 'data' is given twice in one mapping \(line 2, column 1\)"),
    (b"a: !!python/object:os.system {}\n", r"is not valid YAML: could not determine a constructor"),
    (b"[" * 5000, r"is not valid YAML"),
])
def test_unusable_files_give_one_line(tmp_path, content, expected):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError, match=expected) as info:
        load_params(path)
    assert str(info.value).startswith(f"invalid params: {path}") and "\n" not in str(info.value)


def test_a_folder_or_a_missing_file(tmp_path):
    (tmp_path / "params.yaml").mkdir()
    with pytest.raises(ParamsError, match=r"params\.yaml is a folder, not a params file"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match=r"absent\.yaml not found; run from the project root"):
        load_params(tmp_path / "absent.yaml")


def test_a_byte_order_mark_and_yaml_merge_keys_are_fine(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + (ROOT / "params.yaml").read_bytes())
    assert load_params(path).synth.k == 2
    text = (ROOT / "params.yaml").read_text().replace("  batch_size: 1000\n  seed: 0                 # the sampled",
                                                      "  batch_size: &batch 1000\n  seed: 0                 # the sampled")
    text = text.replace("features:\n  batch_size: 500", "features:\n  <<: {batch_size: *batch}\n  batch_size: 500")
    assert "*batch" in text and "&batch" in text
    path.write_text(text)
    assert load_params(path).features.batch_size == 500
