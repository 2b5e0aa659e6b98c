import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from budgetlora.config import Config, from_dict, load_config, recipe_names
from budgetlora.errors import UserError

from .conftest import FIXTURES

README = Path(__file__).resolve().parents[1] / "README.md"
# every bundled recipe resolved by the code before the dataclass defaults became the default recipe
RESOLVED = json.loads((FIXTURES / "recipes-resolved.json").read_text(encoding="utf-8"))
PUBLISHED = ["r6-qkv-a6", "r6-qkv-a24", "r7-qkv-a77", "r2-qv-a4", "r4-qkv-a64-bias"]


def test_bundled_recipes_include_the_published_ones_and_default():
    names = recipe_names()
    for name in PUBLISHED + ["default"]:
        assert name in names


@pytest.mark.parametrize(
    "name, expected",
    [
        ("r6-qkv-a6", dict(r=6, alpha=6.0, lr=1e-5, max_steps=1600, batch_size=16, eval_every=100, metric="val_loss")),
        ("r6-qkv-a24", dict(r=6, alpha=24.0, lr=2e-4, epochs=3, batch_size=16, warmup=0.1, patience=2, max_length=256)),
        ("r7-qkv-a77", dict(r=7, alpha=77.0, dropout=0.01, lr=3e-5, weight_decay=0.1, scheduler="cosine", epochs=6, batch_size=64)),
        ("r2-qv-a4", dict(r=2, alpha=4.0, lr=5e-6, scheduler="constant", epochs=1, batch_size=32, val_size=0.005, patience=3, metric="accuracy", max_length=512)),
        ("r4-qkv-a64-bias", dict(r=4, alpha=64.0, bias="all", lr=2e-5, weight_decay=0.01, warmup=0.1, epochs=11, batch_size=64)),
    ],
)
def test_published_recipes_carry_their_hyperparameters(name, expected):
    cfg = load_config(name)
    seen = dict(
        r=cfg.adapter.r, alpha=cfg.adapter.alpha, dropout=cfg.adapter.dropout, bias=cfg.adapter.bias,
        lr=cfg.train.lr, max_steps=cfg.train.max_steps, epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
        eval_every=cfg.train.eval_every, metric=cfg.train.metric, warmup=cfg.train.warmup,
        patience=cfg.train.early_stopping_patience, max_length=cfg.model.max_length,
        weight_decay=cfg.train.weight_decay, scheduler=cfg.train.scheduler, val_size=cfg.data.val_size,
    )
    for key, value in expected.items():
        assert seen[key] == pytest.approx(value), key


def test_overrides_are_typed():
    cfg = load_config("r6-qkv-a24", ["train.lr=1e-5", "train.max_steps=100", "adapter.targets=query,value",
                             "data.val_size=500", "train.progress=false", "train.eval_every="])
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 100
    assert cfg.adapter.targets == ["query", "value"]
    assert cfg.data.val_size == 500
    assert cfg.train.progress is False
    assert cfg.train.eval_every is None


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.lrr=1", ["train.lrr", "lr"]),
        ("trian.lr=1", ["trian", "train"]),
        ("train.lr=fast", ["train.lr", "number"]),
        ("train.scheduler=step", ["train.scheduler", "linear", "cosine", "constant"]),
        ("adapter.bias=some", ["adapter.bias", "lora_only"]),
        ("adapter.r=0", ["adapter.r", ">= 1"]),
        ("data.val_size=2.5", ["data.val_size"]),
        ("train.lr", ["key=value"]),
    ],
)
def test_wrong_keys_and_values_name_the_key_and_what_is_allowed(override, words):
    with pytest.raises(UserError) as err:
        load_config("r6-qkv-a24", [override])
    for word in words:
        assert word in str(err.value)
    assert "\n" not in str(err.value)


def test_recipe_from_yaml_file_and_resolved_config_round_trips(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("adapter: {r: 3, targets: [query]}\ntrain: {lr: 1.0e-3}\n")
    cfg = load_config(path)
    assert cfg.recipe == "mine" and cfg.adapter.r == 3 and cfg.adapter.targets == ["query"]
    again = from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_unknown_recipe_lists_the_bundled_ones():
    with pytest.raises(UserError, match="r6-qkv-a24"):
        load_config("nope")


# ---------------------------------------------------------------- one set of defaults


def test_the_default_recipe_is_the_dataclass_defaults():
    assert load_config(None) == load_config("default") == Config()
    assert Config().recipe == "default"


def test_bundled_recipes_are_the_snapshotted_ones():
    assert sorted(RESOLVED) == recipe_names()


@pytest.mark.parametrize("name", sorted(RESOLVED))
def test_bundled_recipe_resolves_exactly_as_before(name):
    """A recipe spells out every setting it needs beside the defaults; a changed default must not
    change it. An intended change of a recipe updates tests/fixtures/recipes-resolved.json too."""
    assert load_config(name).to_dict() == RESOLVED[name]


README_NONE = {"none", "off", "all", "auto", "each epoch", "from the data", "= `model.name`", "r // 2"}


def _readme_value(cell: str):
    """A default as the README's table writes it: `text`, a number, true/false, or a word for None."""
    if re.fullmatch(r"`[^`]*`", cell):
        return cell[1:-1]
    if cell in README_NONE:
        return None
    if cell in ("true", "false"):
        return cell == "true"
    return float(cell.replace(",", ""))


def _readme_defaults() -> dict[str, object]:
    """{section.key: default} from the Configuration table; a row may hold several keys (`a` / `b`,
    or `a`, `b`) with as many defaults, or one default for them all."""
    section = README.read_text(encoding="utf-8").split("## Configuration", 1)[1].split("\n### ", 1)[0]
    documented = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        key_cell, default_cell = [c.strip() for c in line.split(" | ")[:2]]
        keys = [k.strip("`| ") for k in re.split(r" / |, ", key_cell)]
        values = [_readme_value(v) for v in re.split(r" / |, ", default_cell)]
        assert len(values) in (1, len(keys)), line
        for key, value in zip(keys, values * len(keys) if len(values) == 1 else values):
            assert key not in documented, f"{key} is in the README's table twice"
            documented[key] = value
    return documented


def _config_defaults() -> dict[str, object]:
    return {f"{section}.{key}": value for section, keys in Config().to_dict().items() if isinstance(keys, dict)
            for key, value in keys.items()}


def test_readme_configuration_table_documents_every_key_with_its_default():
    documented, defaults = _readme_defaults(), _config_defaults()
    undocumented, unknown = sorted(defaults.keys() - documented.keys()), sorted(documented.keys() - defaults.keys())
    assert not undocumented, f"config keys missing from the README's table: {undocumented}"
    assert not unknown, f"README table keys that are not config keys: {unknown}"
    wrong = {key: (documented[key], value) for key, value in defaults.items()
             if documented[key] != (pytest.approx(value) if isinstance(value, float) else value)}
    assert not wrong, f"README default != Config() default: {wrong}"


def test_readme_names_the_config_sections():
    sections = [f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory)]
    words = {6: "six", 7: "seven", 8: "eight", 9: "nine"}
    assert f"A recipe is YAML with {words[len(sections)]} sections ({', '.join(sections)})" in README.read_text(encoding="utf-8")
