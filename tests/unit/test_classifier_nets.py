"""Any classifier under DMR: class counts from the data, the Table 5 architectures, torchvision models, a user's
own checkpoint, and representations read by hooks (equal to the former formulas on the default path)."""

from __future__ import annotations

import copy
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from torch.nn import functional as nnf

from dmr_core.data.artifacts import save_zarr
from dmr_core.device import place_images, place_model
from dmr_core.errors import CheckpointError, ParamsError
from dmr_core.images import to_float_images
from dmr_core.nets.classifier import (
    architecture_layout,
    build_classifier,
    initial_classifier,
    load_classifier,
    load_pretrained,
    load_user_checkpoint,
    save_classifier,
    set_input_size,
)
from dmr_core.nets.classifier_base import bounded_grid
from dmr_core.nets.features import extract_features
from dmr_core.nets.hooks import on_meta
from dmr_core.params import parse_params
from helpers import DEFAULTS

SMALL_TV = "torchvision:mobilenet_v3_small"


def _seeded(arch: str, num_classes: int = 10) -> torch.nn.Module:
    """A random classifier with non-trivial BatchNorm statistics, so that a wrong read or fold would show."""
    torch.manual_seed(0)
    model = build_classifier(arch, num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _old_extract_features(model, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """The formulas extract_features used before hooks: feature_map() post-ReLU, its global average, the linear
    layer on that, each batch on the folded, channels-last copy."""
    folded = place_model(model.for_inference(), torch.device("cpu"))
    parts = {"feature_map": [], "penultimate": [], "logits": []}
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = place_images(to_float_images(torch.from_numpy(images[start:start + batch_size])), torch.device("cpu"))
            fmap = folded.feature_map(x).float()
            pen = nnf.adaptive_avg_pool2d(fmap, 1).flatten(1)
            logits = folded.classifier_head()(pen)
            parts["feature_map"].append(fmap.half().numpy())
            parts["penultimate"].append(pen.numpy())
            parts["logits"].append(logits.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


@pytest.mark.parametrize("arch", ["resnet20", "wrn40_2"])
def test_default_representations_equal_the_former_formulas_exactly(arch):
    model = _seeded(arch)
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    new = extract_features(model, images, batch_size=3, device=torch.device("cpu"))
    old = _old_extract_features(model, images, batch_size=3)
    for key in ("feature_map", "penultimate", "logits"):
        assert new[key].dtype == old[key].dtype and np.array_equal(new[key], old[key]), key


def test_hooked_feature_map_is_layer3_and_auto_resolves_per_architecture():
    model = _seeded("resnet20")
    x = torch.rand(2, 3, 32, 32)
    reps = model.representations(x)
    assert torch.equal(reps["feature_map"], model.feature_map(x))
    assert torch.equal(reps["logits"], model(x))
    assert torch.equal(reps["penultimate"], model.penultimate(model.feature_map(x)))
    assert {arch: architecture_layout(arch).default_layer for arch in ("resnet20", "wrn40_2", "resnet50",
                                                                       "densenet121", "torchvision:resnet18")} == {
        "resnet20": "layer3", "wrn40_2": "relu", "resnet50": "layer4", "densenet121": "features.relu5",
        "torchvision:resnet18": "layer4"}


def test_wrn_checkpoints_without_the_relu_module_still_load():
    model = build_classifier("wrn40_2")
    state = model.state_dict()
    assert not any(k.startswith("relu") for k in state)
    build_classifier("wrn40_2").load_state_dict(state)


def test_another_layer_is_read_and_refused_where_logits_cannot_come_from_it():
    model = _seeded("resnet20").set_feature_layer("layer2")
    reps = model.representations(torch.rand(2, 3, 32, 32))
    assert reps["feature_map"].shape == (2, 32, 16, 16) and reps["penultimate"].shape == (2, 64)
    with pytest.raises(ParamsError, match="does not pool into the classification layer") as info:
        model.logits_from_feature_map(reps["feature_map"])
    assert "\n" not in str(info.value)
    with pytest.raises(ParamsError, match=r"features\.layer = 'layer9': CifarResNet has no such module; use auto "
                                          r"or a module name such as conv1, bn1, layer1, layer2, layer3, linear"):
        model.set_feature_layer("layer9")


@pytest.mark.parametrize("arch", ["resnet20", "resnet56", "wrn40_2", "resnet50", "densenet121"])
def test_every_architecture_takes_the_class_count(arch):
    model = on_meta(lambda: build_classifier(arch, num_classes=3))
    assert model.classifier_head().out_features == 3
    assert model(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 3)


def test_resnet50_and_densenet121_have_a_cifar_stem():
    for arch, stem, channels, maxpool in (("resnet50", "conv1", 2048, "maxpool"),
                                          ("densenet121", "features.conv0", 1024, None)):
        model = build_classifier(arch, num_classes=5).eval()
        conv = model.core().get_submodule(stem)
        assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
        if maxpool:
            assert isinstance(model.core().get_submodule(maxpool), torch.nn.Identity)
        else:
            assert "pool0" not in dict(model.core().features.named_children())
        with torch.no_grad():
            reps = model.representations(torch.rand(1, 3, 32, 32))
        assert reps["feature_map"].shape == (1, channels, 4, 4)
        assert reps["logits"].shape == (1, 5)
        # the default layer pools exactly into the classification layer (ReAct, ASH, KIRBY rely on it)
        torch.testing.assert_close(model.logits_from_feature_map(reps["feature_map"]), reps["logits"])


def test_torchvision_model_takes_the_images_at_their_own_size_by_default():
    torch.manual_seed(0)
    model = set_input_size(build_classifier(SMALL_TV, num_classes=4).eval(), 64)
    assert model.input_size is None and model.image_size == 64
    seen = []
    model.net.features[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    with torch.no_grad():
        reps = model.representations(torch.rand(2, 3, 64, 64))
    assert seen[0] == (2, 3, 64, 64)  # no 32-px bottleneck and no resize: the model sees the photo as stored
    assert reps["feature_map"].shape == (2, 576, 2, 2)


def test_torchvision_model_scratch_resizes_normalises_and_gives_all_representations():
    torch.manual_seed(0)
    model = set_input_size(build_classifier(SMALL_TV, num_classes=4).eval(), 32, 224)
    assert model.input_size == 224 and model.resolved_layer() == "features"
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    seen = []
    model.net.features[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reps = model.representations(x)
        direct = model.net(model.normalise(nnf.interpolate(x, size=(224, 224), mode="bilinear",
                                                           align_corners=False)))
    assert seen[0] == (2, 3, 224, 224)
    assert reps["feature_map"].shape == (2, 576, 7, 7) and reps["penultimate"].shape == (2, 1024)
    assert torch.equal(reps["logits"], direct) and reps["logits"].shape == (2, 4)
    torch.testing.assert_close(model.logits_from_penultimate(reps["penultimate"]), reps["logits"])
    with pytest.raises(ParamsError, match="does not pool into the classification layer"):
        model.logits_from_feature_map(reps["feature_map"])


def test_torchvision_pretrained_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match=r"allow the download .* or set classifier\.init: scratch") as info:
        load_pretrained(SMALL_TV, num_classes=4)
    assert "\n" not in str(info.value) and "mobilenet_v3_small" in str(info.value)


def test_torchvision_pretrained_replaces_the_classification_layer(monkeypatch):
    """The ImageNet weights (here: those of a random model, standing in for the download) with a new last layer."""
    reference = torchvision.models.get_model("mobilenet_v3_small")
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict",
                        lambda self, *a, **k: copy.deepcopy(reference.state_dict()))
    model = load_pretrained(SMALL_TV, num_classes=3)
    assert model.classifier_head().out_features == 3
    assert torch.equal(model.net.features[0][0].weight, reference.features[0][0].weight)


def test_pretrained_cifar_weights_refuse_another_class_count():
    with pytest.raises(CheckpointError, match=r"CIFAR-10's \(10 classes\) but the ID data has 7 classes; set "
                                              r"classifier\.init: scratch") as info:
        initial_classifier("resnet20", "pretrained", 7)
    assert "\n" not in str(info.value)


class _Wrapper(torch.nn.Module):
    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        reps = self.classifier.representations(x)
        return reps["feature_map"], reps["penultimate"], reps["logits"]


@pytest.mark.parametrize("arch", ["resnet20", SMALL_TV])
def test_representations_trace(arch):
    torch.manual_seed(0)
    model = _Wrapper(build_classifier(arch, num_classes=3).for_inference())
    with pytest.warns(FutureWarning):  # torch deprecates jit.trace, it still works
        traced = torch.jit.trace(model, torch.rand(2, 3, 32, 32))
    x = torch.rand(3, 3, 32, 32)
    for got, expected in zip(traced(x), model(x)):
        assert torch.equal(got, expected)


# ---- a user's own checkpoint -------------------------------------------------------------------------------


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("layout", ["plain", "module_prefix", "state_dict_entry"])
def test_user_checkpoint_round_trip(tmp_path, layout):
    source = _seeded("resnet20", num_classes=4)
    state = source.state_dict()
    payload = {"plain": state, "module_prefix": {f"module.{k}": v for k, v in state.items()},
               "state_dict_entry": {"state_dict": state, "epoch": 3}}[layout]
    path = tmp_path / "mine.pt"
    torch.save(payload, path)
    loaded = load_user_checkpoint(path, "resnet20", num_classes=4)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(_outputs(loaded, x), _outputs(source, x))


def test_user_torchvision_checkpoint_has_torchvisions_own_keys(tmp_path):
    torch.manual_seed(1)
    net = torchvision.models.get_model("mobilenet_v3_small", num_classes=3)
    torch.save(net.state_dict(), tmp_path / "tv.pt")
    loaded = load_user_checkpoint(tmp_path / "tv.pt", SMALL_TV, num_classes=3)
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.state_dict().values(), net.state_dict().values()))


def test_mismatched_user_checkpoint_is_one_line_naming_the_file(tmp_path):
    torch.save(build_classifier("resnet32").state_dict(), tmp_path / "r32.pt")
    with pytest.raises(CheckpointError) as info:
        load_user_checkpoint(tmp_path / "r32.pt", "resnet20", num_classes=10)
    message = str(info.value)
    assert "\n" not in message and "r32.pt" in message and "unexpected: layer1.3" in message
    assert "Is the architecture param right" in message


def test_user_checkpoint_with_another_class_count_is_refused(tmp_path):
    torch.save(build_classifier("resnet20", num_classes=100).state_dict(), tmp_path / "c100.pt")
    with pytest.raises(CheckpointError, match=r"c100\.pt: its classification layer linear\.weight has 100 outputs "
                                              r"but the ID data has 10 classes") as info:
        load_user_checkpoint(tmp_path / "c100.pt", "resnet20", num_classes=10)
    assert "\n" not in str(info.value)


def test_user_checkpoint_with_other_class_names_or_arch_is_refused(tmp_path):
    model = build_classifier("resnet20", num_classes=2)
    save_classifier(model, "resnet20", tmp_path / "ours.pt", class_names=["cat", "dog"])
    assert load_user_checkpoint(tmp_path / "ours.pt", "resnet20", 2, ["cat", "dog"]).classifier_head().out_features == 2
    with pytest.raises(CheckpointError, match=r"trained on the classes \['cat', 'dog'\] but the ID data's are"):
        load_user_checkpoint(tmp_path / "ours.pt", "resnet20", 2, ["dog", "cat"])
    with pytest.raises(CheckpointError, match=r"is a resnet20 checkpoint but classifier\.arch = 'resnet32'"):
        load_user_checkpoint(tmp_path / "ours.pt", "resnet32", 2)


def test_the_checkpoint_records_the_size_it_was_trained_at(tmp_path):
    """A 48-px run's classifier says so (a 32-px one's file is as it always was), loads at that size for dmr score,
    and as a user's checkpoint it is refused for data of another size before anything trains."""
    model = set_input_size(build_classifier("resnet20", num_classes=2), 48)
    save_classifier(model, "resnet20", tmp_path / "at48.pt")
    assert torch.load(tmp_path / "at48.pt", weights_only=True)["image_size"] == 48
    assert load_classifier(tmp_path / "at48.pt").image_size == 48
    with pytest.raises(CheckpointError, match=r"at48\.pt was trained on 48×48 images but the data are 32×32 "
                                              r"\(data\.image_size\); set data\.image_size: 48") as info:
        load_user_checkpoint(tmp_path / "at48.pt", "resnet20", 2, image_size=32)
    assert "\n" not in str(info.value)
    assert load_user_checkpoint(tmp_path / "at48.pt", "resnet20", 2, image_size=48).classifier_head().out_features == 2
    save_classifier(build_classifier("resnet20", num_classes=2), "resnet20", tmp_path / "at32.pt")
    assert "image_size" not in torch.load(tmp_path / "at32.pt", weights_only=True)
    assert load_classifier(tmp_path / "at32.pt").image_size == 32


def test_a_torchvision_checkpoint_keeps_its_resize_and_an_old_one_the_resize_it_had(tmp_path):
    model = set_input_size(build_classifier(SMALL_TV, num_classes=2), 64)
    save_classifier(model, SMALL_TV, tmp_path / "as_they_come.pt")
    assert load_classifier(tmp_path / "as_they_come.pt").input_size is None
    save_classifier(set_input_size(model, 32, 224), SMALL_TV, tmp_path / "resized.pt")
    assert load_classifier(tmp_path / "resized.pt").input_size == 224
    payload = torch.load(tmp_path / "as_they_come.pt", weights_only=True)
    del payload["input_size"]  # as written before input sizes were stored, when every torchvision model resized
    torch.save(payload, tmp_path / "old.pt")
    assert load_classifier(tmp_path / "old.pt").input_size == 224


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_user_checkpoint_is_never_unpickled(tmp_path, capsys):
    torch.save({"state_dict": {}, "hook": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt is not a weights-only torch file") as info:
        load_user_checkpoint(tmp_path / "evil.pt", "resnet20", 10)
    assert "unpickled" not in capsys.readouterr().out and "\n" not in str(info.value)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt holds no state dict"):
        load_user_checkpoint(tmp_path / "list.pt", "resnet20", 10)


def test_classifier_checkpoint_stores_the_class_count_and_old_ones_still_load(tmp_path):
    model = _seeded("resnet20", num_classes=3)
    save_classifier(model, "resnet20", tmp_path / "new.pt", class_names=["a", "b", "c"])
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    assert payload["num_classes"] == 3 and payload["class_names"] == ["a", "b", "c"]
    torch.save({"arch": "resnet20", "state_dict": model.state_dict()}, tmp_path / "old.pt")  # before class counts
    x = torch.rand(2, 3, 32, 32)
    for name in ("new.pt", "old.pt"):
        loaded = load_classifier(tmp_path / name)
        assert not loaded.training and torch.equal(loaded(x), _outputs(model, x))
    assert load_classifier(tmp_path / "new.pt", "layer2").resolved_layer() == "layer2"


def test_classifier_stage_takes_the_class_count_from_the_data(tmp_path, monkeypatch):
    from stages.classifier import main

    rng = np.random.default_rng(0)
    names = ["apple", "pear", "plum"]
    for split, n in (("train", 12), ("test", 6)):
        save_zarr(tmp_path / f"{split}.zarr", {"images": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                                               "labels": np.arange(n) % 3}, attrs={"class_names": names})
    raw = copy.deepcopy(DEFAULTS)
    raw["classifier"].update(init="scratch", epochs=1, batch_size=4)
    monkeypatch.setenv("DMR_DEVICE", "cpu")
    main(parse_params(raw), tmp_path / "train.zarr", tmp_path / "test.zarr", tmp_path / "c.pt", tmp_path / "m.json",
         tmp_path / "curve.csv")
    assert (tmp_path / "curve.csv").read_text().splitlines()[0] == "epoch,loss,accuracy"
    loaded = load_classifier(tmp_path / "c.pt")
    assert loaded.classifier_head().out_features == 3
    assert torch.load(tmp_path / "c.pt", weights_only=True)["class_names"] == names
    # the same data with the published CIFAR-10 weights: refused in one line before training
    raw["classifier"]["init"] = "pretrained"
    with pytest.raises(CheckpointError, match="the ID data has 3 classes"):
        main(parse_params(raw), tmp_path / "train.zarr", tmp_path / "test.zarr", tmp_path / "d.pt",
             tmp_path / "n.json", tmp_path / "n.csv")
    assert not (tmp_path / "d.pt").exists()


# ---- params ------------------------------------------------------------------------------------------------


def _params(classifier: dict | None = None, **sections: dict):
    raw = copy.deepcopy(DEFAULTS)
    raw["classifier"].update(classifier or {})
    for section, values in sections.items():
        raw[section].update(values)
    return parse_params(raw)


def _refused(match: str, classifier: dict | None = None, **sections: dict) -> str:
    with pytest.raises(ParamsError, match=match) as info:
        _params(classifier, **sections)
    assert "\n" not in str(info.value)
    return str(info.value)


NO_FEATURE_MAP_LOGITS = {"baselines": {"detectors": ["MSP", "KNN"]}, "synth_baselines": {"variants": ["mlm"]}}


def test_params_accept_the_new_architectures():
    assert _params({"arch": "torchvision:resnet18"}, **NO_FEATURE_MAP_LOGITS).classifier.init == "pretrained"
    assert _params({"arch": "resnet50", "init": "scratch"}).features.layer == "auto"  # layer4 pools into fc
    assert _params({"arch": "densenet121", "init": "scratch"}, features={"layer": "features.denseblock4"},
                   **NO_FEATURE_MAP_LOGITS).features.layer == "features.denseblock4"


def test_params_refuse_unknown_architectures_saying_how_to_list_them():
    message = _refused(r"classifier\.arch = 'torchvision:resnet9000': unknown classifier arch",
                       {"arch": "torchvision:resnet9000"})
    assert "list_models(module=m)" in message and "resnet50, densenet121" in message
    _refused(r"classifier\.arch = 'torchvision:squeezenet1_0': its output is not made by an nn\.Linear",
             {"arch": "torchvision:squeezenet1_0", "init": "scratch"})
    _refused(r"classifier\.init = 'pretrained' with classifier\.arch = 'resnet50'", {"arch": "resnet50"})


def test_params_refuse_an_unknown_layer_listing_valid_names():
    message = _refused(r"features\.layer = 'layer4': resnet20 has no such module", features={"layer": "layer4"})
    assert "use auto (layer3), one of conv1, bn1, layer1, layer2, layer3 or a submodule such as" in message


def test_params_refuse_feature_map_logits_where_the_layer_does_not_pool_into_the_head():
    message = _refused(r"ReAct, ASH, kirby, dmr_kirby compute logits from the feature map",
                       {"arch": SMALL_TV})
    assert "drop them from baselines.detectors" in message
    _refused("ReAct, ASH", features={"layer": "layer2"})
    _refused(r"generator\.perceptual_weight = 0\.5 with classifier\.arch = 'torchvision:mobilenet_v3_small'",
             {"arch": SMALL_TV}, generator={"perceptual_weight": 0.5}, **NO_FEATURE_MAP_LOGITS)


def test_params_checkpoint_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    torch.save({}, tmp_path / "models" / "mine.pt")
    assert _params({"init": "checkpoint", "checkpoint": "models/mine.pt", "epochs": 0}).classifier.epochs == 0
    _refused(r"classifier\.checkpoint = 'models/mine\.pt' with classifier\.init = 'pretrained': set "
             r"classifier\.init: checkpoint", {"checkpoint": "models/mine.pt"})
    _refused(r"classifier\.init = 'checkpoint' with classifier\.checkpoint = None", {"init": "checkpoint"})
    _refused(r"classifier\.checkpoint = 'models/other\.pt': no such file", {"init": "checkpoint",
                                                                          "checkpoint": "models/other.pt"})
    for outside in (str(tmp_path / "models" / "mine.pt"), "mine.pt", "models/../mine.pt"):
        _refused(r"classifier\.checkpoint = .*: put the checkpoint in the project's models/ folder",
                 {"init": "checkpoint", "checkpoint": outside})


# ---- the paper's recipe: WRN-40-2's dropout, every architecture trainable ------------------------------------


def test_wrn_dropout_zero_builds_the_same_network_and_draws_no_random_number():
    torch.manual_seed(0)
    plain = build_classifier("wrn40_2")
    after_build = torch.get_rng_state()
    torch.manual_seed(0)
    zero = build_classifier("wrn40_2", dropout=0.0)
    assert torch.equal(torch.get_rng_state(), after_build)
    torch.manual_seed(0)
    dropped = build_classifier("wrn40_2", dropout=0.3)
    for other in (zero, dropped):  # the same weights and keys: checkpoints load either way
        state = other.state_dict()
        assert list(state) == list(plain.state_dict())
        assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    x = torch.rand(2, 3, 32, 32)
    before = torch.get_rng_state()
    plain.train()(x)  # (this also moves its BatchNorm statistics: it is not compared below)
    assert torch.equal(torch.get_rng_state(), before)  # a training pass without dropout draws nothing
    with torch.no_grad():
        assert torch.equal(zero.eval()(x), dropped.eval()(x))  # dropout acts only in training
        torch.manual_seed(2)
        first = dropped.train()(x)
        assert not torch.equal(first, dropped(x))  # a new mask per pass
        torch.manual_seed(2)
        assert torch.equal(first, dropped(x))  # drawn from the seeded generator


def test_a_dropout_is_refused_for_the_architectures_that_have_none():
    with pytest.raises(ParamsError, match=r"classifier\.dropout = 0\.3 with classifier\.arch = 'resnet50': only "
                                          r"wrn40_2 has a dropout; set classifier\.dropout: 0"):
        build_classifier("resnet50", dropout=0.3)
    with pytest.raises(ParamsError, match=r"'resnet20': only wrn40_2 has a dropout"):
        initial_classifier("resnet20", "pretrained", 10, dropout=0.1)  # before any weights are looked for
    _refused(r"^invalid params: classifier\.dropout = 0\.3 with classifier\.arch = 'resnet20': only wrn40_2 has a "
             r"dropout; set classifier\.dropout: 0$", {"dropout": 0.3})
    assert _params({"arch": "wrn40_2", "init": "scratch", "dropout": 0.3}).classifier.dropout == 0.3


@pytest.mark.parametrize("arch", ["resnet20", "wrn40_2", "resnet50", "densenet121"])
def test_every_builtin_architecture_takes_a_training_step(arch):
    """Table 5's profiles train them from scratch (DenseNet-121's hookable final ReLU once broke the backward pass:
    torchvision's in-place ReLU after it overwrote the output nn.ReLU keeps)."""
    torch.manual_seed(0)
    model = build_classifier(arch, num_classes=3, dropout=0.3 if arch == "wrn40_2" else 0.0).train()
    nnf.cross_entropy(model(torch.rand(2, 3, 32, 32)), torch.tensor([0, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_written_out_torchvision_models_are_the_installed_torchvisions():
    """The classification models are written out so that a stage need not import torchvision to validate
    classifier.arch; after a torchvision upgrade this names what to write."""
    import torchvision.models

    from dmr_core.nets.torchvision_nets import TORCHVISION_CLASSIFIERS

    assert TORCHVISION_CLASSIFIERS == tuple(torchvision.models.list_models(module=torchvision.models))


@pytest.mark.parametrize(("side", "pooled"), [(8, 8), (12, 6), (16, 8), (20, 5), (28, 7), (56, 8), (13, 1)])
def test_the_feature_map_is_pooled_in_equal_cells_keeping_its_global_average(side, pooled):
    """features.max_grid 8: every cell the mean of k×k positions, k the smallest divisor of the side that brings it
    within 8, so the penultimate vector (the map's global average) is the one the classifier computes."""
    fmap = torch.randn(2, 5, side, side + 4 if side == 12 else side, dtype=torch.float64)
    out = bounded_grid(fmap, 8)
    width = 8 if side == 12 else pooled  # a 12×16 map: 2×2 cells down, 2×2 across
    assert out.shape == (2, 5, pooled, width)
    torch.testing.assert_close(out.mean(dim=(2, 3)), fmap.mean(dim=(2, 3)))
    assert bounded_grid(fmap, 0) is fmap  # 0: as it comes


def test_a_48_px_resnet_gives_its_pooled_map_and_unchanged_logits():
    torch.manual_seed(0)
    model = build_classifier("resnet20", num_classes=3).eval().set_max_grid(8)
    with torch.no_grad():
        reps = model.representations(torch.rand(2, 3, 48, 48))
    assert reps["feature_map"].shape == (2, 64, 6, 6)  # layer3 is 12×12 at 48 px
    torch.testing.assert_close(model.logits_from_feature_map(reps["feature_map"]), reps["logits"])
