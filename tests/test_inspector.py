"""Shape inspector and the `attnkit sites` / `attnkit inspect` CLI contracts."""

import json

import pytest
from conftest import TINY

import attnkit
from attnkit.cli import main

pytestmark = pytest.mark.core

# Seed 003's two tables for SD1.5 at 512x512 with CFG: (tokens, head_dim) per 1-based index; batch x heads = 16.
SEED_003_TOKENS = [4096, 4096, 1024, 1024, 256, 256, 64, 256, 256, 256, 1024, 1024, 1024, 4096, 4096, 4096]
SEED_003_HEAD_DIM = {4096: 40, 1024: 80, 256: 160, 64: 160}


def seed_003_rows(kind):
    rows = []
    for index, tokens in enumerate(SEED_003_TOKENS, start=1):
        d = SEED_003_HEAD_DIM[tokens]
        keys = tokens if kind == "self" else 77
        rows.append({"index": index, "kind": kind, "query": [16, tokens, d], "key": [16, keys, d],
                     "value": [16, keys, d], "attention": [16, tokens, keys]})
    return rows


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_random_sd15_at_512_equals_seed_003_tables(capsys):
    code, out, _ = run_cli(capsys, "inspect", "random-sd15", "--height", "512", "--width", "512", "--json")
    assert code == 0
    records = json.loads(out)
    assert all(set(r) == {"index", "site", "kind", "query", "key", "value", "attention"} for r in records)
    for kind in ("self", "cross"):
        got = [{k: v for k, v in r.items() if k != "site"} for r in records if r["kind"] == kind]
        assert got == seed_003_rows(kind)
    assert [r["site"] for r in records if r["kind"] == "self"][6].startswith("mid_block.")


@pytest.mark.parametrize("name", TINY)
def test_call_order_matches_static_site_order_and_shapes_are_consistent(pipelines, name):
    pipe = pipelines[name]
    records = attnkit.inspect_shapes(pipe, height=64, width=64, prompt="a red circle")
    found = attnkit.sites(pipe, height=64, width=64)
    assert [(r.site, r.index) for r in records] == [(s.name, s.index) for s in found]
    for r, site in zip(records, found):
        assert r.resolution == site.resolution
        assert r.query[2] == r.key[2] == site.head_dim and r.query[0] % site.heads == 0
        assert r.attention == (r.query[0], r.query[1], r.key[1])
        image_tokens = site.resolution[0] * site.resolution[1]
        assert r.query[1] == image_tokens if site.kind in ("self", "cross", "self2") else r.query[1] > image_tokens


def test_cli_sites_json_contract(capsys, pipelines):
    code, out, _ = run_cli(capsys, "sites", "tiny-sd35", "--json")
    assert code == 0
    listed = json.loads(out)
    assert all(list(s) == ["name", "kind", "block", "heads", "head_dim"] for s in listed)
    assert {s["kind"] for s in listed} == {"joint", "self2"}
    code, out, _ = run_cli(capsys, "sites", "tiny-sd15")
    assert code == 0 and "cross" in out and out.strip().splitlines()[-1].startswith(f"{len(attnkit.sites(pipelines['tiny-sd15']))} sites")


def test_cli_unknown_model_is_one_clear_error(capsys):
    code, out, err = run_cli(capsys, "sites", "tiny-sd9")
    assert code == 2 and out == ""
    assert "unknown model 'tiny-sd9'" in err and "tiny-sd15" in err and "hub id" in err
    code, _, err = run_cli(capsys, "inspect", "/nonexistent/folder/x")
    assert code == 2 and "could not load" in err


def test_cli_inspect_tables(capsys):
    code, out, _ = run_cli(capsys, "inspect", "tiny-flux", "--height", "64", "--width", "64")
    assert code == 0 and "joint attention" in out and "single attention" in out and "Attention Probability" in out


def test_cli_loads_a_local_saved_pipeline_with_from_pretrained(capsys, pipelines, tmp_path):
    pipelines["tiny-sd15"].save_pretrained(tmp_path / "saved")
    code, out, _ = run_cli(capsys, "sites", str(tmp_path / "saved"), "--json")
    assert code == 0
    assert [s["name"] for s in json.loads(out)] == attnkit.sites(pipelines["tiny-sd15"]).names
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "sites", str(tmp_path / "empty"))
    assert code == 2 and "without model_index.json" in err
