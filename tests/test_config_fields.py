"""The run settings a study shares with each of its runs are TrainConfig's fields, declared once."""

import dataclasses
from dataclasses import dataclass
from typing import get_type_hints

from hpo.spaces import FIXED_SETTINGS
from hpo.spec import RELOCATABLE, SHARED_SETTINGS, StudySpec
from hypermaml.config import TrainConfig, setting, train_setting
from hypermaml.fitting import RESUMABLE_CHANGES

# A StudySpec field named like a TrainConfig field that is another setting: the study's seed seeds its
# searcher, and search k's runs train with a seed derived from it (StudySpec.search_seed).
SAME_NAME_OTHER_SETTING = {"seed"}


def redeclared(cls: type) -> list[str]:
    """The fields of `cls` named like a TrainConfig field whose help, bounds or type are not TrainConfig's
    own (train_setting's help may add "; <note>")."""
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints, train_hints = get_type_hints(cls), get_type_hints(TrainConfig)
    wrong = []
    for f in dataclasses.fields(cls):
        if f.name not in train_fields or f.name in SAME_NAME_OTHER_SETTING:
            continue
        train = train_fields[f.name].metadata
        help_text, train_help = f.metadata.get("help", ""), train["help"]
        rest = {k: v for k, v in f.metadata.items() if k not in ("help", "train_field")}
        if (
            f.metadata.get("train_field") != f.name
            or rest != {k: v for k, v in train.items() if k != "help"}  # low, above, flag, why
            or not (help_text == train_help or help_text.startswith(train_help + "; "))
            or hints[f.name] != train_hints[f.name]
        ):
            wrong.append(f.name)
    return wrong


def test_study_spec_redeclares_no_train_config_field():
    assert redeclared(StudySpec) == []


def test_a_redeclared_field_is_caught():
    @dataclass(frozen=True)
    class Redeclares:
        way: int = setting("classes per episode (N)", 5)  # TrainConfig's help, but not its bound
        shot: int = setting("support images", 1, low=1)
        query: float = train_setting("query")  # another type
        test_episodes: int = train_setting("val_episodes")  # another field's help
        epochs: int = train_setting("epochs", 3, note="per trial")  # fine: a default and a note of its own

    assert redeclared(Redeclares) == ["way", "shot", "query", "test_episodes"]


def test_the_shared_settings_are_the_study_fields_named_like_train_config_fields():
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    study_names = [f.name for f in dataclasses.fields(StudySpec)]
    assert list(SHARED_SETTINGS) == [n for n in study_names if n in train_names and n not in SAME_NAME_OTHER_SETTING]
    assert len(SHARED_SETTINGS) == 14


def test_the_study_keeps_its_defaults():
    study = StudySpec()
    defaults = {name: getattr(study, name) for name in SHARED_SETTINGS}
    assert defaults == {
        "dataset": "omniglot",
        "data_root": "",
        "cache_dir": "",
        "download": False,
        "way": 5,
        "shot": 1,
        "query": 15,
        "train_query": 0,
        "epochs": 5,
        "max_train_seconds": 0.0,
        "max_train_flops": 0.0,
        "meta_batch": 8,
        "val_episodes": 100,
        "test_episodes": 600,
    }


def test_fixed_settings_give_every_shared_setting_and_spaces_may_set_none_but_meta_batch():
    study = StudySpec(way=3, epochs=2, meta_batch=4, seed=7, gpus_per_trial=0.5)
    fixed = study.fixed_settings("maml", search=1)
    assert list(fixed) == ["algorithm", *SHARED_SETTINGS, "eval_seed", "seed", "device"]
    assert {k: fixed[k] for k in SHARED_SETTINGS} == {k: getattr(study, k) for k in SHARED_SETTINGS}
    assert [fixed[k] for k in ("algorithm", "eval_seed", "seed", "device")] == ["maml", 100_007, 100_007, "cuda"]
    assert set(fixed) - FIXED_SETTINGS == {"meta_batch"}


def test_what_may_change_when_a_run_resumes_or_a_study_starts_again():
    assert RESUMABLE_CHANGES == {"data_root", "cache_dir", "download", "epochs"}
    assert RELOCATABLE == {"address", "data_root", "cache_dir", "download", "tracking_uri"}
