"""SamplingOptions: the one description of how a video is sampled, recipes included."""

from __future__ import annotations

import pytest

from inbetweening.methods import resolve_settings
from inbetweening.options import RECIPES, SamplingOptions
from inbetweening.sampling import predictions
from inbetweening.utils import InbetweeningError

TOY_DEFAULTS = {"num_inference_steps": 25, "reinject_count": 3, "fps": 7}


def resolved(options: SamplingOptions, model=TOY_DEFAULTS) -> dict:
    """What a call with these options runs with on a model recommending ``model``."""
    kw = options.check().call_kwargs()
    return resolve_settings(kw.pop("method"), kw, model, kw.pop("recipe", None))[0]


def cost(kw: dict) -> int:
    return predictions(kw["sampler"], kw["num_inference_steps"], kw["reinject_count"],
                       kw["reinject_fraction"], reinject_at=kw["reinject_at"])


def test_options_give_only_what_was_set():
    assert SamplingOptions().call_kwargs() == {"method": "gi"}
    kw = SamplingOptions(steps=4, guidance=(1.0, 2.0), size=(128, 64), recipe="fast").call_kwargs()
    assert kw == {"method": "gi", "recipe": "fast", "num_inference_steps": 4,
                  "min_guidance_scale": 1.0, "max_guidance_scale": 2.0, "width": 128,
                  "height": 64}


def test_the_model_recommendation_applies_under_what_is_set():
    assert {k: resolved(SamplingOptions())[k] for k in TOY_DEFAULTS} == TOY_DEFAULTS
    kw = resolved(SamplingOptions(steps=4, guidance=(1.0, 2.0)))
    assert (kw["num_inference_steps"], kw["min_guidance_scale"], kw["max_guidance_scale"],
            kw["reinject_count"]) == (4, 1.0, 2.0, 3)
    assert cost(resolved(SamplingOptions(), model={})) == 175  # no recommendation: the paper's


def test_recipes_cost_what_they_promise_and_explicit_options_override_them():
    assert cost(resolved(SamplingOptions(recipe="paper"))) == 175  # 50 + 5 x 25
    assert cost(resolved(SamplingOptions(recipe="balanced"))) <= 175 / 4
    assert cost(resolved(SamplingOptions(recipe="fast"))) <= 175 / 16
    mixed = resolved(SamplingOptions(recipe="paper", steps=10, reinject=0))
    assert (mixed["num_inference_steps"], mixed["reinject_count"]) == (10, 0)
    assert set(RECIPES) == {"paper", "balanced", "fast"}
    balanced = resolved(SamplingOptions(recipe="balanced"))
    assert (balanced["num_inference_steps"], balanced["reinject_count"],
            balanced["reinject_at"], balanced["sampler"]) == (12, 2, "alternate", "euler")
    fast = resolved(SamplingOptions(recipe="fast"))
    assert (fast["num_inference_steps"], fast["reinject_count"], fast["reinject_at"],
            fast["sampler"]) == (7, 1, "alternate", "euler")


@pytest.mark.parametrize("bad", [dict(recipe="slow"), dict(steps=0), dict(steps=10**6),
                                 dict(frames=2), dict(reinject=-1), dict(reinject_fraction=1.5),
                                 dict(guidance=(float("nan"), 1.0)), dict(fuse="max"),
                                 dict(method="nope")])
def test_bad_options_are_refused(bad):
    with pytest.raises(InbetweeningError):
        SamplingOptions(**bad).check()


def test_the_torch_free_names_are_the_samplers_names():
    from inbetweening import options, sampling

    assert options.SAMPLER_NAMES == tuple(sampling.SAMPLERS)
    assert options.REINJECT_PLACES == sampling.REINJECT_PLACES


@pytest.mark.parametrize("field,value", [("sampler", "lms"), ("reinject_at", "last")])
def test_unknown_sampler_or_placement_is_refused(field, value):
    with pytest.raises(InbetweeningError, match=field.replace("_", "-")):
        SamplingOptions(**{field: value}).check()
    good = {"sampler": "heun", "reinject_at": "middle"}[field]
    assert SamplingOptions(**{field: good}).check().call_kwargs()[field] == good
