"""Bad sets and damaged results folders are answered before any work, in one line, and leave no
results folder behind; a damaged record is redone, not trusted; impossible toy sets are refused at
once (they used to retry for ever)."""

from __future__ import annotations

import json
import shutil

import pytest

from inbetweening import cli, evaluation


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory):
    return evaluation.make_toy_set(tmp_path_factory.mktemp("sets") / "toy", 2, frames=5)


def one_error(capsys, argv) -> str:
    code = cli.main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def broken_copy(toy_set, tmp_path, edit):
    bad = tmp_path / "bad-set"
    shutil.copytree(toy_set, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    edit(manifest, bad)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    return bad


def drop_centers(m, folder):
    del m["pairs"][1]["sprites"][0]["centers"]


def short_centers(m, folder):
    m["pairs"][0]["sprites"][0]["centers"] = m["pairs"][0]["sprites"][0]["centers"][:2]


def lose_a_frame(m, folder):
    frames = sorted((folder / m["pairs"][1]["clip"]).iterdir())
    frames[-1].unlink()


@pytest.mark.parametrize("edit, words", [(drop_centers, "centers"),
                                         (short_centers, "centers"),
                                         (lose_a_frame, "the true clip has 4 frames")])
def test_a_broken_set_is_refused_before_any_work(edit, words, toy_set, tmp_path, capsys):
    bad = broken_copy(toy_set, tmp_path, edit)
    line = one_error(capsys, ["evaluate", bad, "--methods", "crossfade", "--out",
                              tmp_path / "res"])
    assert words in line
    assert not (tmp_path / "res").exists()


def without_seconds(out):
    saved = json.loads((out / "metrics.json").read_text())
    for entry in list(saved["methods"].values()) + saved["pairs"]:
        entry.pop("seconds")
    return saved


def test_damaged_settings_are_refused_and_a_damaged_record_is_redone(toy_set, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["evaluate", toy_set, "--methods", "crossfade", "--out", out]
    assert cli.main([str(a) for a in argv]) == 0
    first = without_seconds(out)
    record = next((out / "records" / "crossfade").iterdir())
    record.write_text('{"pair": ')  # cut short
    assert cli.main([str(a) for a in argv]) == 0
    assert without_seconds(out) == first
    (out / "settings.json").write_text("{not json")
    capsys.readouterr()
    assert "settings.json" in one_error(capsys, argv)


@pytest.mark.parametrize("frames, words", [("40", "cannot make toy pairs"),
                                           ("100000", "frames must be between 3 and 1,024")])
def test_a_toy_set_that_cannot_be_made_is_refused_at_once(frames, words, tmp_path, capsys):
    line = one_error(capsys, ["benchmark", "toy", "--n", "1", "--frames", frames, "--out",
                              tmp_path / "set"])
    assert words in line
    assert list(tmp_path.iterdir()) == []


def test_an_ambiguous_toy_set_records_its_world(tmp_path):
    out = evaluation.make_toy_set(tmp_path / "amb", 2, world_name="ambiguous")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world"] == "ambiguous"
    speeds = [s["speed"] for p in manifest["pairs"] for s in p["sprites"]]
    assert all(s < 1.5 or s > 3.5 for s in speeds)  # slow or fast, nothing between


def test_methods_all_names_every_method_and_unknown_ones_are_refused():
    from inbetweening.evaluation.scoring import parse_methods
    from inbetweening.methods import METHODS
    from inbetweening.utils import InbetweeningError

    every = parse_methods("all")
    assert every == list(evaluation.ALL_METHODS) and set(METHODS) <= set(every)
    assert {"vibid", "gi-sequential", "mpd", "trf-avg", "flow"} <= set(every)
    assert parse_methods("gi, vibid,gi") == ["gi", "vibid"]
    with pytest.raises(InbetweeningError, match="unknown method 'film'"):
        parse_methods("gi,film")


def test_the_ambiguous_world_is_evaluated_with_its_bundled_model(tmp_path, capsys):
    """``inbetween benchmark toy --world ambiguous`` then ``inbetween evaluate --model
    toy-ambiguous``: its own backward weights, a peer method beside gi, tracked and scored."""
    held_out = tmp_path / "amb"
    assert cli.main(["benchmark", "toy", "--n", "1", "--world", "ambiguous", "--out",
                     str(held_out)]) == 0
    out = tmp_path / "results"
    assert cli.main(["evaluate", str(held_out), "--methods", "gi,gi-sequential", "--out",
                     str(out), "--model", "toy-ambiguous", "--steps", "2", "--device",
                     "cpu"]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    for m in ("gi", "gi-sequential"):
        assert saved["methods"][m]["trajectory_error"] >= 0
        assert 0 <= saved["methods"][m]["blended"] <= 1
    from inbetweening.toy.models import AMBIGUOUS_MODEL

    settings = json.loads((out / "settings.json").read_text())
    assert str(AMBIGUOUS_MODEL) in json.dumps(settings)  # the model resolved, recorded
