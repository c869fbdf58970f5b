"""SamplingOptions: the one description of how a video is sampled, recipes included."""

from __future__ import annotations

import pytest

from inbetweening.options import RECIPES, SamplingOptions
from inbetweening.sampling import predictions
from inbetweening.utils import InbetweeningError

TOY_DEFAULTS = {"num_inference_steps": 25, "reinject_count": 3, "fps": 7}


def cost(kw: dict) -> int:
    return predictions(kw.get("sampler", "euler"), kw["num_inference_steps"],
                       kw["reinject_count"], kw.get("reinject_fraction", 0.5),
                       reinject_at=kw.get("reinject_at", "first"))


def test_the_model_defaults_apply_under_what_is_set():
    assert SamplingOptions().call_kwargs(TOY_DEFAULTS) == {**TOY_DEFAULTS, "method": "gi"}
    kw = SamplingOptions(steps=4, guidance=(1.0, 2.0), size=(128, 64)).call_kwargs(TOY_DEFAULTS)
    assert (kw["num_inference_steps"], kw["min_guidance_scale"], kw["max_guidance_scale"],
            kw["width"], kw["height"], kw["reinject_count"]) == (4, 1.0, 2.0, 128, 64, 3)


def test_recipes_cost_what_they_promise_and_explicit_options_override_them():
    paper = SamplingOptions(recipe="paper").call_kwargs(TOY_DEFAULTS)
    assert cost(paper) == 175  # 50 steps + 5 re-injections on each of the first 25
    assert cost(SamplingOptions(recipe="balanced").call_kwargs(TOY_DEFAULTS)) <= 175 / 4
    assert cost(SamplingOptions(recipe="fast").call_kwargs(TOY_DEFAULTS)) <= 175 / 16
    mixed = SamplingOptions(recipe="paper", steps=10, reinject=0).call_kwargs(TOY_DEFAULTS)
    assert (mixed["num_inference_steps"], mixed["reinject_count"]) == (10, 0)
    assert set(RECIPES) == {"paper", "balanced", "fast"}
    balanced = SamplingOptions(recipe="balanced").call_kwargs(TOY_DEFAULTS)
    assert (balanced["num_inference_steps"], balanced["reinject_count"],
            balanced["reinject_at"], balanced["sampler"]) == (12, 2, "alternate", "euler")
    fast = SamplingOptions(recipe="fast").call_kwargs(TOY_DEFAULTS)
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
