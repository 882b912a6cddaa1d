"""`attnkit ui`: every named endpoint driven by `gradio_client` against the app served in-process on shapes-sd3,
requests queued on one lock, errors shown as messages, and the page itself in headless Chromium."""

import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from attnkit.cli import main  # noqa: E402
from attnkit.errors import AttnkitError  # noqa: E402
from attnkit.ui import canvas  # noqa: E402
from attnkit.ui.app import (REGION_COLUMNS, SHOWN_SIDE, Studio, _progress, _shown, build_app,  # noqa: E402
                            enlarged, load, region_spec)
from attnkit.ui.serving import Keep, Keeper, Limits, check_mask_name, exposed, read_upload  # noqa: E402

MODEL = "shapes-sd3"
STEPS = 4  # segmentation reads noise level 300, which a run of 4 steps reaches
ROWS = [["a red circle", "", 0.0, 0.0, 0.5, 1.0], ["a blue square", "", 0.5, 0.0, 1.0, 1.0]]
SWAPPED = [["a blue square", "", 0.0, 0.0, 0.5, 1.0], ["a red circle", "green", 0.5, 0.0, 1.0, 1.0]]
BASE = "a red circle and a blue square"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """The app on shapes-sd3 at a free local port, for the whole module."""
    studio = Studio(MODEL, load(MODEL))
    app = build_app(studio)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield studio, f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served[1], verbose=False)


def table(rows):
    return {"headers": list(REGION_COLUMNS), "data": rows}


def regional(client, rows, seed=0, base=BASE, grid=""):
    return client.predict(table(rows), grid, base, 0.5, "", seed, STEPS, None, None, None, api_name="/regional")


def record_of(path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["attnkit"])


def pixels(source) -> np.ndarray:
    """RGB pixels of an image or an image file."""
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"))
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


def test_the_named_endpoints_are_those_of_the_commands(client):
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/generate", "/regional", "/maps", "/segment"} <= set(named)


def test_regional_png_is_the_one_attnkit_regional_writes_for_the_same_spec(client, tmp_path):
    outlined, png = regional(client, ROWS, seed=3)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": {"prompt": BASE, "weight": 0.5},
                                "regions": [{"prompt": r[0], "box": r[2:]} for r in ROWS]}))
    out = tmp_path / "cli.png"
    assert main(["regional", MODEL, "--spec", str(spec), "--out", str(out), "--steps", str(STEPS), "--seed", "3"]) == 0
    assert record_of(png) == record_of(out)
    assert record_of(png)["spec"]["regions"][1] == {"prompt": "a blue square", "box": [0.5, 0.0, 1.0, 1.0]}
    assert np.array_equal(pixels(png), pixels(out))
    shown = pixels(enlarged(Image.open(png)))
    assert pixels(outlined).shape == shown.shape and not np.array_equal(pixels(outlined), shown)


def test_two_concurrent_regional_requests_each_equal_the_same_request_run_alone(client, served):
    studio, _ = served
    before = dict(studio.pipe.transformer.attn_processors)
    alone = [regional(client, ROWS, seed=1), regional(client, SWAPPED, seed=2)]
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(regional, client, ROWS, 1), pool.submit(regional, client, SWAPPED, 2)]
        together = [job.result() for job in jobs]
    for single, concurrent in zip(alone, together):
        assert record_of(single[1]) == record_of(concurrent[1])
        assert np.array_equal(pixels(single[1]), pixels(concurrent[1]))
        assert np.array_equal(pixels(single[0]), pixels(concurrent[0]))
    assert not np.array_equal(pixels(alone[0][1]), pixels(alone[1][1]))
    assert studio.pipe.transformer.attn_processors == before
    assert not studio.lock.locked()


@pytest.mark.parametrize("rows, grid, message", [
    ([["a red circle", "", 0.0, 0.0, 1.5, 1.0]], "", "lies outside [0, 1]"),
    ([["a red circle", "", 0.5, 0.0, 0.5, 1.0]], "", "is empty"),
    ([["a red circle", "", "left", 0.0, 0.5, 1.0]], "", "region 1: x0 is 'left', not a number"),
    ([["a red circle", "", 0.0, None, 0.5, 1.0]], "", "the box has no y0"),
    ([["a red circle", "", None, None, None, None]], "", "region 1 has no box"),
    (ROWS, "1,1", "clear the grid to use the boxes"),
    ([["a red circle", "", None, None, None, None]], "1,1", "divides the image into 2 cells"),
])
def test_a_bad_region_is_an_error_message_and_the_app_serves_on(client, rows, grid, message):
    with pytest.raises(AppError, match=message.replace("[", r"\[").replace("]", r"\]")) as raised:
        regional(client, rows, grid=grid, base="")
    assert "Traceback" not in str(raised.value)
    assert record_of(regional(client, ROWS)[1])["command"] == "regional"


def test_a_generation_that_raises_leaves_the_pipeline_unlocked_with_its_own_processors(client, served):
    studio, _ = served
    before = dict(studio.pipe.transformer.attn_processors)
    hidden = [["a red circle", "", 0.0, 0.0, 0.5, 1.0], ["a blue square", "", 0.0, 0.0, 1.0, 1.0]]
    with pytest.raises(AppError, match=r"region\(s\) \[1\] get no image token"):  # found inside the session
        regional(client, hidden)
    assert studio.pipe.transformer.attn_processors == before
    assert not studio.lock.locked()


def test_a_grid_places_regions_without_boxes(client):
    rows = [[r[0], "", None, None, None, None] for r in ROWS]
    _, png = regional(client, rows, grid="1,1")
    assert record_of(png)["spec"]["grid"] == "1,1"
    assert [r["prompt"] for r in record_of(png)["spec"]["regions"]] == ["a red circle", "a blue square"]


def test_bad_sampling_fields_name_the_field(client):
    with pytest.raises(AppError, match="steps is 0; enter a whole number of at least 1"):
        client.predict(table(ROWS), "", BASE, 0.5, "", 0, 0, None, None, None, api_name="/regional")
    with pytest.raises(AppError, match="--height 36 is not a multiple of 8"):
        client.predict(table(ROWS), "", BASE, 0.5, "", 0, 2, 36, None, None, api_name="/regional")


def test_true_cfg_field_is_shown_only_for_pipelines_that_take_true_cfg_scale(served, pipelines, tmp_path):
    def shown(studio):
        components = build_app(studio).config["components"]
        return next(c["props"]["visible"] for c in components if c["props"].get("elem_id") == "true-cfg")

    assert shown(served[0]) is False
    assert shown(Studio("tiny-flux", pipelines["tiny-flux"], tmp_path)) is True


def test_regional_negatives_on_flux_need_the_true_cfg_field_and_are_recorded_with_it(pipelines, tmp_path):
    studio = Studio("tiny-flux", pipelines["tiny-flux"], tmp_path)
    fields = (table(SWAPPED)["data"], "", BASE, 0.5, "", 0, 1, None, None, None)  # region 2 has a negative
    with pytest.raises(AttnkitError, match="the true CFG field in `attnkit ui`"):
        studio.regional(*fields, "", progress=lambda *args, **kwargs: None)
    _, png, _ = studio.regional(*fields, "3", progress=lambda *args, **kwargs: None)
    assert record_of(png)["true_cfg_scale"] == 3.0


def test_true_cfg_scale_on_a_pipeline_that_takes_none_is_an_error_naming_the_field(client):
    with pytest.raises(AppError, match="true CFG scale applies to .*; StableDiffusion3Pipeline does not"):
        client.predict(table(ROWS), "", BASE, 0.5, "", 0, 2, None, None, None, "3", api_name="/regional")
    with pytest.raises(AppError, match="true CFG scale is '-1'; enter a finite number of 0 or more"):
        client.predict(table(ROWS), "", BASE, 0.5, "", 0, 2, None, None, None, "-1", api_name="/regional")


def test_saved_spec_files_load_back_into_the_same_fields(client):
    yaml_file, json_file = client.predict(table(SWAPPED), "", BASE, 0.25, "blurry", api_name="/save_spec")
    assert Path(yaml_file).name == "spec.yaml" and Path(json_file).name == "spec.json"
    for path in (yaml_file, json_file):
        rows, grid, base, weight, negative, *_ = client.predict([handle_file(path)], api_name="/load_spec")
        assert rows["data"] == [[r[0], r[1], *r[2:]] for r in SWAPPED]
        assert (grid, base, weight, negative) == ("", BASE, 0.25, "blurry")


def test_a_spec_with_a_word_region_is_refused_with_the_command_that_runs_it(client, tmp_path):
    spec = tmp_path / "worded.yaml"
    spec.write_text("base: {prompt: a red circle}\nregions:\n  - {prompt: a red circle, from_word: circle}\n")
    with pytest.raises(AppError, match="run this spec with `attnkit regional`"):
        client.predict([handle_file(str(spec))], api_name="/load_spec")


def test_maps_endpoint_gives_a_word_per_choice_its_overlay_and_the_maps_file(client):
    image, words, overlay, maps_file = client.predict("a red circle", 0, STEPS, None, None, None, api_name="/maps")
    assert [choice[0] for choice in words["choices"]] == ["a", "red", "circle"]
    assert words["value"] == "a"
    assert pixels(image).shape == (SHOWN_SIDE, SHOWN_SIDE, 3)
    assert pixels(overlay).shape == pixels(image).shape and not np.array_equal(pixels(overlay), pixels(image))
    from safetensors import safe_open

    with safe_open(maps_file, "pt") as saved:
        assert {"word.red", "word.circle"} <= set(saved.keys())
        assert json.loads(saved.metadata()["prompts"]) == ["a red circle"]


def test_segment_endpoint_segments_a_generated_and_an_uploaded_image(client):
    image, overlay, labels = client.predict("a red circle", None, 0, STEPS, None, None, None, api_name="/segment")
    assert pixels(overlay).shape == pixels(image).shape == (SHOWN_SIDE, SHOWN_SIDE, 3)
    assert labels["headers"][:2] == ["id", "label"]
    assert {row[1] for row in labels["data"]} <= {"a", "red", "circle", "background"}
    assert sum(row[2] for row in labels["data"]) == 64 * 64  # areas in pixels of the generated image
    _, png = client.predict("a red circle", 0, STEPS, None, None, None, api_name="/generate")
    shown, overlay, labels = client.predict("a red circle", handle_file(png), 0, STEPS, None, None, None,
                                            api_name="/segment")
    assert np.array_equal(pixels(shown), pixels(enlarged(Image.open(png))))
    assert len(labels["data"]) >= 1 and pixels(overlay).shape == pixels(shown).shape


def test_segment_without_prompt_or_image_says_to_give_one(client):
    with pytest.raises(AppError, match="enter a prompt to segment a generated image, or upload an image"):
        client.predict("", None, 0, STEPS, None, None, None, api_name="/segment")


def test_generate_png_is_the_one_attnkit_generate_writes(client, tmp_path):
    _, png = client.predict("a blue square", 5, STEPS, None, None, None, api_name="/generate")
    out = tmp_path / "cli.png"
    assert main(["generate", MODEL, "--prompt", "a blue square", "--out", str(out), "--steps", str(STEPS),
                 "--seed", "5"]) == 0
    assert record_of(png) == record_of(out)
    assert np.array_equal(pixels(png), pixels(out))


def test_requests_reuse_the_loaded_pipeline(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a request loaded a pipeline")

    monkeypatch.setattr("attnkit.run.models.load_pipeline", refuse)
    monkeypatch.setattr("attnkit.shapes.load", refuse)
    assert record_of(client.predict("a red circle", 0, 2, None, None, None, api_name="/generate")[1])["seed"] == 0
    assert record_of(regional(client, ROWS)[1])["command"] == "regional"


def test_progress_reports_every_denoising_step(served):
    studio, _ = served
    reported = []
    studio.regional(table(ROWS)["data"], "", BASE, 0.5, "", 0, 3, None, None, None,
                    progress=lambda value, **kwargs: reported.append(value))
    assert reported == [0, (1, 3), (2, 3), (3, 3)]


def test_apps_on_one_pipeline_share_its_one_lock(served, tmp_path):
    studio, _ = served
    assert Studio("again", studio.pipe, tmp_path).lock is studio.lock
    class OtherPipeline:
        pass

    assert Studio(MODEL, OtherPipeline(), tmp_path).lock is not studio.lock


def test_the_step_callback_hands_the_pipeline_its_tensors_back():
    tensors = {"latents": object()}
    assert _progress(lambda *args, **kwargs: None, 2)(None, 0, 999, tensors) is tensors


def test_region_spec_skips_blank_rows_and_keeps_per_region_negatives():
    spec = region_spec([["a red circle", "green", 0, 0, 0.5, 1], [None, "", None, None, None, None],
                        ["a blue square", "", 0.5, 0, 1, 1]], "", "", None, "blurry")
    assert spec.as_dict() == {"negative": "blurry", "regions": [
        {"prompt": "a red circle", "box": [0.0, 0.0, 0.5, 1.0], "negative": "green"},
        {"prompt": "a blue square", "box": [0.5, 0.0, 1.0, 1.0]}]}


def test_ui_on_a_taken_port_fails_at_once_naming_the_port(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        assert main(["ui", "tiny-sd3", "--port", str(port)]) == 2
    assert time.monotonic() - started < 5  # before loading the model
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize("folder_content, message", [
    ({}, "without model_index.json"),
    ({"model_index.json": "{not json"}, "cannot load the model"),
])
def test_ui_on_a_model_that_cannot_load_fails_with_a_message(tmp_path, capsys, folder_content, message):
    for name, text in folder_content.items():
        (tmp_path / name).write_text(text)
    assert main(["ui", str(tmp_path), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_model_that_cannot_be_read_is_named_and_a_bug_while_loading_keeps_its_own_error():
    def unreadable(model):
        raise OSError("no such file")

    def buggy(model):
        raise TypeError("a bug")

    with pytest.raises(AttnkitError, match=r"cannot load the model 'x' \(OSError: no such file\)"):
        load("x", unreadable)
    with pytest.raises(TypeError, match="a bug"):
        load("x", buggy)


def test_a_handler_shows_attnkits_message_in_the_page_and_logs_any_other_error_with_its_traceback(caplog):
    import gradio as gr

    def refused():
        raise AttnkitError("enter a prompt")

    def broken():
        raise RuntimeError("a bug")

    with pytest.raises(gr.Error, match="enter a prompt"):
        _shown(refused)()
    assert not caplog.records
    with caplog.at_level(logging.ERROR, logger="attnkit.ui.app"), pytest.raises(RuntimeError, match="a bug"):
        _shown(broken)()
    assert "broken failed" in caplog.text and "RuntimeError: a bug" in caplog.text


def test_ui_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` then fails as if it were not installed
    monkeypatch.delitem(sys.modules, "attnkit.ui.app")
    assert main(["ui", "--port", str(free_port())]) == 2
    assert 'needs gradio, an optional dependency: pip install "attnkit[ui]"' in capsys.readouterr().err


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_ui_port_outside_1_to_65535_is_a_usage_error(port, capsys):
    with pytest.raises(SystemExit):
        main(["ui", "--port", port])
    assert "give a port number from 1 to 65535" in capsys.readouterr().err


# ---- the page in a browser ----

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def test_video_edit_endpoint_writes_the_video_attnkit_video_edit_writes(client, tmp_path):
    from attnkit.videoio import read_frames
    from attnkit.shapes.data import random_video

    clip = tmp_path / "clip.gif"
    frames = [Image.fromarray(frame) for frame in random_video(5, frames=3).frames]
    frames[0].save(clip, save_all=True, append_images=frames[1:], duration=125, loop=0)
    mp4, gallery = client.predict(handle_file(str(clip)), "a green circle and a red square", "first+previous", 0.6,
                                  None, 0, STEPS, None, api_name="/video_edit")
    cli_out = tmp_path / "cli.mp4"
    assert main(["video-edit", MODEL, "--video", str(clip), "--prompt", "a green circle and a red square",
                 "--out", str(cli_out), "--steps", str(STEPS), "--seed", "0", "--strength", "0.6"]) == 0
    ours = [np.asarray(frame) for frame in read_frames(mp4)]
    theirs = [np.asarray(frame) for frame in read_frames(cli_out)]
    assert len(ours) == len(theirs) == len(gallery) == 3
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_video_edit_endpoint_runs_a_published_method_as_attnkit_video_edit_method_does(client, tmp_path):
    from attnkit.videoio import read_frames
    from attnkit.shapes.data import random_video

    clip = tmp_path / "clip.gif"
    frames = [Image.fromarray(frame) for frame in random_video(6, frames=2).frames]
    frames[0].save(clip, save_all=True, append_images=frames[1:], duration=125, loop=0)
    mp4, _ = client.predict(handle_file(str(clip)), "a green circle", "text2video-zero", 0.6, None, 0, STEPS, None,
                            api_name="/video_edit")
    argv = ["video-edit", MODEL, "--video", str(clip), "--prompt", "a green circle", "--steps", str(STEPS),
            "--seed", "0", "--strength", "0.6"]
    assert main([*argv, "--out", str(tmp_path / "method.mp4"), "--method", "text2video-zero"]) == 0
    assert main([*argv, "--out", str(tmp_path / "attend.mp4"), "--attend", "first+previous"]) == 0
    ours, method, attend = ([np.asarray(f) for f in read_frames(path)]
                            for path in (mp4, tmp_path / "method.mp4", tmp_path / "attend.mp4"))
    assert all(np.array_equal(a, b) for a, b in zip(ours, method, strict=True))
    assert not np.array_equal(ours[1], attend[1])


def test_video_edit_endpoint_reports_a_bad_strength_in_the_page(client, tmp_path):
    clip = tmp_path / "clip.gif"
    Image.new("RGB", (64, 64)).save(clip)
    with pytest.raises(AppError, match="strength is 1.5"):
        client.predict(handle_file(str(clip)), "a red circle", "none", 1.5, None, 0, STEPS, None,
                       api_name="/video_edit")


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("headless Chromium needs the OS packages chromium and chromium-driver (apt-get install -y "
                    "chromium chromium-driver); they are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


class Page:
    """The app's page in the browser: what a user clicks and types, and waits for."""

    def __init__(self, driver, url):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, 120)
        driver.get(url)
        self.wait.until(lambda d: d.find_elements("css selector", '#regions [data-testid="cell-1-5"]'))

    def find(self, selector):
        return self.driver.find_element("css selector", selector)

    def cell(self, row, column):
        return self.find(f'#regions [data-testid="cell-{row}-{column}"]')

    def edit_cell(self, row, column, text):
        from selenium.webdriver.support.ui import WebDriverWait
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        from selenium.common.exceptions import TimeoutException

        for attempt in range(3):  # a double click that lands while the page still lays itself out misses the cell
            ActionChains(self.driver).double_click(self.cell(row, column)).perform()
            try:
                WebDriverWait(self.driver, 10).until(lambda d: d.switch_to.active_element.tag_name == "textarea")
                break
            except TimeoutException:
                if attempt == 2:
                    raise
        editor = self.driver.switch_to.active_element
        editor.send_keys(Keys.CONTROL, "a")
        editor.send_keys(text, Keys.ENTER)
        self.wait.until(lambda d: self.cell(row, column).text.splitlines()[0] == text)

    def fill(self, selector, text):
        from selenium.webdriver.common.keys import Keys

        field = self.find(f"{selector} input, {selector} textarea")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE, text, Keys.TAB)

    def tab(self, name):
        self.driver.find_element("xpath", f"//button[@role='tab'][normalize-space()='{name}']").click()

    def image_source(self, selector):
        images = self.driver.find_elements("css selector", f"{selector} img")
        return images[0].get_attribute("src") if images else None

    def wait_for_new_image(self, selector, old=None):
        self.wait.until(lambda d: self.image_source(selector) not in (None, old))
        return self.image_source(selector)

    def error_text(self):
        toasts = self.driver.find_elements("css selector", ".toast-body")
        return " ".join(t.text for t in toasts)


def test_page_regional_maps_and_a_bad_box(served, browser, downloads, tmp_path):
    """Set ATTNKIT_UI_SCREENSHOTS to a folder to keep the screenshots."""
    shots = Path(os.environ.get("ATTNKIT_UI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page = Page(browser, served[1])
    entered = [("a blue circle", ["0", "0", "0.625", "1"]), ("a red square", ["0.625", "0", "1", "1"])]
    for row, (prompt, box) in enumerate(entered):
        page.edit_cell(row, 0, prompt)
        for column, value in enumerate(box, start=2):
            page.edit_cell(row, column, value)
    page.fill("#regional-steps", str(STEPS))
    page.fill("#regional-seed", "7")
    page.find("#regional-generate").click()
    page.wait_for_new_image("#regional-image")
    page.wait.until(lambda d: d.find_elements("css selector", "#regional-png a[href]"))
    assert page.find("#regional-image img").get_attribute("naturalWidth") != "0"
    browser.save_screenshot(str(shots / "regional.png"))
    page.find("#regional-png a[href]").click()
    png = downloads / "regional.png"
    page.wait.until(lambda d: png.is_file() and png.stat().st_size > 0)
    record = record_of(png)
    assert record["spec"]["regions"] == [{"prompt": p, "box": [float(v) for v in box]} for p, box in entered]
    assert record["spec"]["base"] == {"prompt": BASE, "weight": 0.5}
    assert (record["seed"], record["num_inference_steps"]) == (7, STEPS)

    page.tab("Maps")
    page.fill("#maps-steps", str(STEPS))
    page.find("#maps-generate").click()
    first = page.wait_for_new_image("#word-overlay")
    page.wait.until(lambda d: d.find_elements("xpath", "//*[@id='words']//label[normalize-space()='circle']"))
    browser.find_element("xpath", "//*[@id='words']//label[normalize-space()='circle']").click()
    circle = page.wait_for_new_image("#word-overlay", first)
    assert circle.endswith(".png") and page.find("#word-overlay img").get_attribute("naturalWidth") != "0"
    browser.save_screenshot(str(shots / "maps.png"))

    page.tab("Regional")
    page.edit_cell(0, 4, "1.5")
    page.find("#regional-generate").click()
    page.wait.until(lambda d: "lies outside [0, 1]" in page.error_text())
    message = page.error_text()
    assert "region 1 ('a blue circle'): box [0.0, 0.0, 1.5, 1.0]" in message, message
    assert "Traceback" not in browser.page_source
    browser.save_screenshot(str(shots / "error.png"))


def test_page_segment_shows_the_overlay_and_a_row_per_segment(served, browser):
    page = Page(browser, served[1])
    page.tab("Segment")
    page.fill("#segment-steps", str(STEPS))
    page.find("#segment-run").click()
    page.wait_for_new_image("#segment-overlay")
    page.wait.until(lambda d: d.find_elements("css selector", '#segment-labels [data-testid="cell-0-1"]'))
    labels = {cell.text.splitlines()[0] for cell in browser.find_elements(
        "css selector", '#segment-labels [data-testid^="cell-"][data-col="1"]') if cell.text}
    assert labels and labels <= {"a", "red", "circle", "background"}
    assert page.find("#segment-overlay img").get_attribute("naturalWidth") == str(SHOWN_SIDE)


# ---- the canvas, uploads and files ----

CANVAS = (384, 384)


def test_the_box_canvas_draws_the_tables_boxes_and_reads_them_back_unchanged():
    rows = [["a red circle", "", 0.0, 0.0, 0.3, 1.0], ["a blue square", "", 0.5, 0.25, 1.0, 0.75]]
    boxes = canvas.table_boxes(rows, CANVAS)
    assert [(b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in boxes] == [(0, 0, 115, 384), (192, 96, 384, 288)]
    assert [b["label"] for b in boxes] == ["1 · a red circle", "2 · a blue square"]
    assert canvas.rows_from_boxes(rows, boxes, CANVAS) is None  # a typed 0.3 stays 0.3, not 115 / 384


def test_a_box_drawn_adds_a_row_a_moved_box_rewrites_only_its_row_a_removed_one_clears_its_box():
    rows = [["a red circle", "", 0.0, 0.0, 0.3, 1.0], ["a blue square", "", 0.5, 0.25, 1.0, 0.75]]
    boxes = canvas.table_boxes(rows, CANVAS)
    boxes[1] |= {"xmin": 96, "xmax": 288}
    drawn = {"xmin": 10, "ymin": 20, "xmax": 100, "ymax": 200, "label": "", "color": (0, 0, 0)}
    table = canvas.rows_from_boxes(rows, [drawn, *boxes], CANVAS)  # the canvas lists the newest box first
    assert table == [rows[0], ["a blue square", "", 0.25, 0.25, 0.75, 0.75],
                     ["", "", round(10 / 384, 4), round(20 / 384, 4), round(100 / 384, 4), round(200 / 384, 4)]]
    assert canvas.rows_from_boxes(rows, boxes[1:], CANVAS)[0] == ["a red circle", "", None, None, None, None]


def test_a_box_still_being_drawn_changes_no_row():
    rows = [["a red circle", "", 0.0, 0.0, 0.5, 1.0]]
    starting = {"xmin": 40, "ymin": 40, "xmax": 40, "ymax": 40, "label": ""}
    assert canvas.rows_from_boxes(rows, [starting, *canvas.table_boxes(rows, CANVAS)], CANVAS) is None


def test_the_canvas_is_the_output_scaled_by_a_whole_factor_to_at_least_the_shown_side():
    assert canvas.canvas_size(64, 64) == (384, 384)
    assert canvas.canvas_size(128, 64) == (768, 384)
    assert canvas.canvas_size(1024, 768) == (1024, 768)


def test_a_painted_layer_is_its_opaque_pixels_and_the_spec_takes_output_pixels_half_painted():
    layer = Image.new("RGBA", (12, 6), (0, 0, 0, 0))
    layer.paste((255, 0, 0, 255), (0, 0, 6, 6))
    layer.paste((255, 0, 0, 100), (6, 0, 12, 6))  # faint: not painted
    assert canvas.mask_from_layer(layer).sum() == 36
    assert canvas.mask_rows(canvas.mask_from_layer(layer), 4, 2) == [[1, 1, 0, 0], [1, 1, 0, 0]]
    half = np.zeros((6, 12), bool)
    half[:, :2] = True  # 2 of the 3 columns under the first output pixel
    assert canvas.mask_rows(half, 4, 2) == [[1, 0, 0, 0], [1, 0, 0, 0]]
    assert canvas.mask_from_image(Image.new("L", (3, 3), 255)).all()
    assert not canvas.mask_from_image(Image.new("RGBA", (3, 3), (255, 255, 255, 0))).any()


def test_a_mask_layer_shows_exactly_the_mask_at_the_canvas_size():
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:40] = True
    layer = canvas.mask_layer(mask, CANVAS, 2)
    assert layer.size == CANVAS
    assert np.array_equal(canvas.mask_from_layer(layer)[::6, ::6], mask)


@pytest.mark.parametrize("name", ["/etc/hostname", "../x.png", "masks/x.png", "..", "C:\\x.png", "a\\..\\x.png"])
def test_a_mask_name_that_leaves_the_upload_is_refused(name):
    with pytest.raises(AttnkitError, match="points outside the upload"):
        check_mask_name(name, "region 1")


def test_a_bare_mask_name_is_kept():
    assert check_mask_name("mask-2.png", "region 2") == "mask-2.png"


def huge_png(path, side=20000):
    """A PNG whose header says side x side pixels, with a few bytes of data: what a decompression bomb looks like
    before it is decoded."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def bad_uploads(folder):
    """(file, message) for each kind of bad upload."""
    text = folder / "notes.png"
    text.write_text("not an image, whatever its name says\n")
    whole = folder / "whole.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(whole)
    cut = folder / "cut.png"
    cut.write_bytes(whole.read_bytes()[:-40])
    return [(huge_png(folder / "huge.png"), "is 400 megapixels; this server takes images up to 50 megapixels"),
            (text, "is not an image"), (cut, "is a damaged image")]


def test_bad_uploads_are_errors_naming_the_problem(tmp_path):
    for path, message in bad_uploads(tmp_path):
        with pytest.raises(AttnkitError, match=re.escape(message)):
            read_upload(path, "the upload", Limits())
    large = huge_png(tmp_path / "large.png", 9000)  # within what Pillow opens: its header tells the size
    with pytest.raises(AttnkitError, match=re.escape("is 9000x9000 pixels (81 megapixels); this server takes images "
                                                     "up to 50 megapixels")):
        read_upload(large, "the upload", Limits())
    with pytest.raises(AttnkitError, match="this server takes files up to 0 MB"):
        read_upload(bad_uploads(tmp_path)[1][0], "the upload", Limits(max_bytes=10))


def test_the_keeper_removes_request_files_past_their_age_and_the_oldest_past_the_size_budget(tmp_path):
    import time as clock

    now = clock.time()
    folders = []
    for age in (5000, 3000, 200, 10):
        folder = tmp_path / f"request-{age}"
        folder.mkdir()
        (folder / "image.png").write_bytes(b"x" * 1000)
        os.utime(folder, (now - age, now - age))
        folders.append(folder)
    Keeper(tmp_path, Keep(max_age=3600, max_bytes=10**6, min_age=60)).sweep(now)
    assert [f.exists() for f in folders] == [False, True, True, True]
    Keeper(tmp_path, Keep(max_age=3600, max_bytes=1500, min_age=60)).sweep(now)
    assert [f.exists() for f in folders] == [False, False, False, True]  # the last is younger than min_age
    Keeper(tmp_path, Keep(max_age=3600, max_bytes=1500, min_age=60)).sweep(now + 3600)
    assert not any(f.exists() for f in folders)


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("::1", False), ("localhost", False),
                                          ("0.0.0.0", True), ("::", True), ("my-host.lan", True)])
def test_serving_beyond_loopback_counts_as_exposed(host, warned):
    assert exposed(host) is warned


def test_ui_on_0_0_0_0_warns_that_anyone_on_the_network_can_use_the_gpu(pipelines, capsys):
    from attnkit.ui.app import launch

    app = launch("tiny-sd3", "0.0.0.0", free_port(), loader=lambda model: pipelines["tiny-sd3"],
                 prevent_thread_lock=True, quiet=True)
    app.close()
    err = capsys.readouterr().err
    assert "serving on 0.0.0.0: anyone who can reach this machine on the network can use this page, and so its GPU" \
           in err and "add --auth USER:PASS" in err


def test_ui_auth_asks_for_the_login_before_the_page(pipelines):
    import urllib.error
    import urllib.request

    from attnkit.ui.app import launch

    port = free_port()
    app = launch("tiny-sd3", "127.0.0.1", port, loader=lambda model: pipelines["tiny-sd3"], auth=("ana", "s3cret"),
                 prevent_thread_lock=True, quiet=True)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30)
        assert refused.value.code == 401
        login = urllib.request.Request(f"http://127.0.0.1:{port}/login", data=b"username=ana&password=s3cret",
                                       method="POST")
        assert urllib.request.urlopen(login, timeout=30).status == 200
    finally:
        app.close()


@pytest.mark.parametrize("auth", ["ana", "ana:", ":pw"])
def test_ui_auth_without_user_and_password_is_a_usage_error(auth, capsys):
    with pytest.raises(SystemExit):
        main(["ui", "--auth", auth])
    assert "give USER:PASS, both non-empty" in capsys.readouterr().err


def masked_rows():
    """Region 1 a box, region 2 a mask (no box)."""
    return [["a red circle", "", 0.0, 0.0, 0.5, 1.0], ["a blue square", "", None, None, None, None]]


def layer_file(tmp_path, mask):
    """A mask canvas layer (opaque where `mask`, at the canvas size) as the file gradio_client uploads."""
    path = tmp_path / "layer.png"
    canvas.mask_layer(mask, CANVAS, 2).save(path)
    return path


def right_half():
    mask = np.zeros((64, 64), bool)
    mask[8:56, 32:] = True
    return mask


def test_a_painted_mask_goes_into_the_png_spec_as_the_painted_output_pixels(client, tmp_path):
    editor = {"background": None, "layers": [handle_file(str(layer_file(tmp_path, right_half())))],
              "composite": None}
    _, png = client.predict(table(masked_rows()), "", BASE, 0.5, "", 0, STEPS, None, None, None, None, editor, 2,
                            api_name="/regional")
    region = record_of(png)["spec"]["regions"][1]
    assert region["prompt"] == "a blue square" and "box" not in region
    assert np.array_equal(np.asarray(region["mask"], bool), right_half())
    spec = tmp_path / "record.json"  # the record's spec is one `attnkit regional` runs to the same image
    spec.write_text(json.dumps(record_of(png)["spec"]))
    out = tmp_path / "cli.png"
    assert main(["regional", MODEL, "--spec", str(spec), "--out", str(out), "--steps", str(STEPS)]) == 0
    assert np.array_equal(pixels(png), pixels(out))


def test_a_region_with_a_box_and_a_mask_or_a_mask_without_its_row_is_an_error(client, tmp_path):
    editor = {"background": None, "layers": [handle_file(str(layer_file(tmp_path, right_half())))],
              "composite": None}
    boxed = [masked_rows()[0], ["a blue square", "", 0.5, 0.0, 1.0, 1.0]]
    with pytest.raises(AppError, match="region 2 has a box and a mask: clear its box cells"):
        client.predict(table(boxed), "", BASE, 0.5, "", 0, STEPS, None, None, None, None, editor, 2,
                       api_name="/regional")
    with pytest.raises(AppError, match=re.escape("a mask is painted for region 2, but the table has 1 row(s)")):
        client.predict(table(boxed[:1]), "", BASE, 0.5, "", 0, STEPS, None, None, None, None, editor, 2,
                       api_name="/regional")


def test_a_saved_spec_with_a_mask_loads_back_with_its_mask_png(served, client, tmp_path):
    editor = {"background": None, "layers": [handle_file(str(layer_file(tmp_path, right_half())))],
              "composite": None}
    saved = client.predict(table(masked_rows()), "", BASE, 0.5, "", None, None, editor, 2, api_name="/save_spec")
    names = [Path(path).name for path in saved]
    assert names == ["spec.yaml", "spec.json", "mask-2.png"]
    import yaml

    data = yaml.safe_load(Path(saved[0]).read_text())
    assert data["regions"][1] == {"prompt": "a blue square", "mask": "mask-2.png"}
    assert np.array_equal(np.asarray(Image.open(saved[2])) > 0, right_half())
    session = Client(served[1], verbose=False)  # a page of its own: the loaded masks stay with it
    rows, grid, base, weight, negative, boxes, shown, painting = session.predict(
        [handle_file(saved[0]), handle_file(saved[2])], api_name="/load_spec")
    assert rows["data"][0] == masked_rows()[0] and rows["data"][1][:2] == ["a blue square", ""]
    assert [(b["xmin"], b["xmax"], b["label"]) for b in boxes["boxes"]] == [(0, 192, "1 · a red circle")]
    assert painting["value"] == 1 and not canvas.mask_from_layer(Image.open(shown["layers"][0])).any()
    # the loaded mask stays with the page: a generation without a canvas layer runs it
    _, png = session.predict(table(rows["data"]), grid, base, weight, negative, 0, STEPS, None, None, None, None, None,
                            1, api_name="/regional")
    assert np.array_equal(np.asarray(record_of(png)["spec"]["regions"][1]["mask"], bool), right_half())


@pytest.mark.parametrize("mask, message", [
    ("/etc/hostname", "mask '/etc/hostname' points outside the upload"),
    ("../x.png", "mask '../x.png' points outside the upload"),
    ("mask-9.png", "the mask 'mask-9.png' was not uploaded"),
])
def test_a_spec_naming_a_mask_outside_its_upload_is_refused_and_the_app_serves_on(served, tmp_path, mask, message):
    session = Client(served[1], verbose=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"regions:\n  - {{prompt: a red circle, mask: '{mask}'}}\n")
    with pytest.raises(AppError, match=re.escape(message)):
        session.predict([handle_file(str(spec))], api_name="/load_spec")
    assert record_of(regional(session, ROWS)[1])["command"] == "regional"


def test_bad_image_uploads_are_messages_and_the_app_serves_on(client, tmp_path):
    for path, message in bad_uploads(tmp_path):
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict("a red circle", handle_file(str(path)), 0, STEPS, None, None, None, api_name="/segment")
        assert record_of(client.predict("a red circle", 0, 2, None, None, None, api_name="/generate")[1])["seed"] == 0


@pytest.mark.parametrize("rows, base, message", [
    ([["a red circle", "", -0.1, 0.0, 0.5, 1.0]], BASE, "box [-0.1, 0.0, 0.5, 1.0] lies outside [0, 1]"),
    ([["", "", 0.0, 0.0, 1.0, 1.0]], "", "region 1 has no prompt: type what it shows"),
])
def test_a_negative_box_or_an_empty_prompt_is_a_message_and_the_app_serves_on(client, rows, base, message):
    with pytest.raises(AppError, match=re.escape(message)):
        regional(client, rows, base=base)
    assert record_of(regional(client, ROWS)[1])["command"] == "regional"


def test_a_segment_clicked_becomes_a_region_whose_mask_is_the_segment(served, tmp_path):
    from types import SimpleNamespace

    studio, _ = served
    _, png = studio.generate("a red circle", 0, STEPS, None, None, None, progress=lambda *a, **k: None)
    overlay, found = studio.segment_regions(png, "a red circle", 0, None,
                                            progress=lambda *a, **k: None)
    assert overlay.size == (SHOWN_SIDE, SHOWN_SIDE)
    labels = found["labels"]
    x, y = 20, 30  # an output pixel; the overlay shows it 6 times as large
    rows, _, masks, region, editor, _, _ = studio.pick_segment(
        found, ROWS, None, None, None, None, 1, {}, [], SimpleNamespace(index=[x * 6 + 3, y * 6 + 3]))
    picked = labels[y, x]
    assert region == 3 and rows[2] == [found["names"][picked] or "", "", None, None, None, None]
    assert np.array_equal(masks[3], labels == picked)
    assert np.array_equal(canvas.mask_from_layer(editor["layers"][0])[::6, ::6], labels == picked)


def test_the_box_canvas_showing_boxes_this_server_sent_changes_no_row(served, tmp_path):
    """Typing outruns the canvas: its echo of an older table must not write the older boxes back."""
    studio, _ = served
    older = [["a red circle", "", 0.0, 0.0, 0.5, 1.0]]
    typed = [["a red circle", "", 0.0, 0.0, 0.25, 1.0]]
    shown, _, sent = studio.show_table(older, None, None, None, {}, [])
    shown["image"].save(tmp_path / "canvas.png")
    shown["image"] = str(tmp_path / "canvas.png")  # the page sends the canvas's image as a file
    import gradio as gr

    assert all(out == gr.skip() for out in studio.boxes_drawn(shown, typed, {}, sent))  # an echo: no change
    moved = shown | {"boxes": [shown["boxes"][0] | {"xmax": 288}]}
    assert studio.boxes_drawn(moved, typed, {}, sent)[0] == [["a red circle", "", 0.0, 0.0, 0.75, 1.0]]


# ---- the canvas in a browser ----

def image_point(element, image_size, zoom, fx, fy):
    """Offsets from `element`'s centre (what Selenium moves to) of the point at fractions (fx, fy) of an image of
    `image_size` drawn centred in it at `zoom`."""
    width, height = image_size
    return (fx - 0.5) * width * zoom, (fy - 0.5) * height * zoom


def drag(driver, element, start, end, steps=8):
    from selenium.webdriver.common.action_chains import ActionChains

    actions = ActionChains(driver).move_to_element_with_offset(element, *start).click_and_hold()
    for k in range(1, steps + 1):
        actions.move_to_element_with_offset(element, start[0] + (end[0] - start[0]) * k / steps,
                                            start[1] + (end[1] - start[1]) * k / steps)
    actions.release().perform()


def rows_shown(page):
    return len(page.driver.find_elements("css selector", '#regions [data-testid^="cell-"][data-col="0"]'))


def generate_and_download(page, downloads, steps=STEPS, seed=0):
    """Generate on the Regional tab and download the PNG; its record."""
    page.fill("#regional-steps", str(steps))
    page.fill("#regional-seed", str(seed))
    old = page.image_source("#regional-image")
    png = downloads / "regional.png"
    png.unlink(missing_ok=True)
    page.find("#regional-generate").click()
    page.wait.until(lambda d: page.image_source("#regional-image") not in (None, old) or page.error_text())
    assert not page.error_text(), page.error_text()
    page.wait.until(lambda d: d.find_elements("css selector", "#regional-png a[href]"))
    page.find("#regional-png a[href]").click()
    page.wait.until(lambda d: png.is_file() and png.stat().st_size > 0)
    return record_of(png)


def screenshot(browser, tmp_path, name):
    """The whole Regional tab in one picture, kept in ATTNKIT_UI_SCREENSHOTS when it names a folder."""
    shots = Path(os.environ.get("ATTNKIT_UI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    size = browser.get_window_size()
    browser.set_window_size(1400, 1750)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shots / name))
    browser.set_window_size(size["width"], size["height"])


def test_page_two_boxes_dragged_on_the_canvas_are_the_pngs_spec_boxes(served, browser, downloads, tmp_path):
    """docs/ui-canvas.png is the screenshot `canvas.png` (set ATTNKIT_UI_SCREENSHOTS to a folder to keep it)."""
    page = Page(browser, served[1])
    page.wait.until(lambda d: d.find_elements("css selector", "#box-canvas canvas"))
    board = page.find("#box-canvas canvas")
    page.wait.until(lambda d: board.size["height"] >= CANVAS[1])
    page.find("#box-canvas button[aria-label='Create box']").click()
    drawn = {"a green circle": (0.08, 0.1, 0.42, 0.55), "a yellow square": (0.55, 0.35, 0.93, 0.9)}
    for count, box in enumerate(drawn.values(), start=3):
        drag(browser, board, image_point(board, CANVAS, 1.0, *box[:2]), image_point(board, CANVAS, 1.0, *box[2:]))
        page.wait.until(lambda d, count=count: rows_shown(page) == count)
    for row, prompt in enumerate(drawn, start=2):
        page.edit_cell(row, 0, prompt)
    record = generate_and_download(page, downloads, seed=3)
    screenshot(browser, tmp_path, "canvas.png")
    regions = record["spec"]["regions"]
    assert [r["prompt"] for r in regions] == ["a red circle", "a blue square", *drawn]
    for region, box in zip(regions[2:], drawn.values()):
        assert np.allclose(region["box"], box, atol=0.01), (region["box"], box)
    typed = regions[2]["box"][2]
    page.wait.until(lambda d: page.cell(2, 4).text.splitlines()[0] == f"{typed:g}")  # the table shows the drag


def capsule(shape, start, end, radius):
    """Boolean image of the points within `radius` of the segment from `start` to `end` (x, y in pixels)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    (x0, y0), (x1, y1) = start, end
    t = np.clip(((xs - x0) * (x1 - x0) + (ys - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
    return np.hypot(xs - x0 - t * (x1 - x0), ys - y0 - t * (y1 - y0)) <= radius


def test_page_a_mask_painted_with_the_brush_is_the_pngs_spec_mask(served, browser, downloads, tmp_path):
    page = Page(browser, served[1])
    page.driver.find_element("xpath", "//button[@role='tab'][normalize-space()='Masks']").click()
    browser.find_element("xpath", "//*[@id='painting']//label[contains(normalize-space(), 'new region')]").click()
    page.wait.until(lambda d: rows_shown(page) == 3)
    page.edit_cell(2, 0, "a green circle")
    page.wait.until(lambda d: d.find_elements("css selector", "#mask-canvas canvas"))
    board = page.find("#mask-canvas canvas")
    zoom = float(browser.find_element("xpath", "//*[@id='mask-canvas']//*[contains(text(), '%')]").text[:-1]) / 100
    page.find("#mask-canvas button[aria-label='Brush']").click()
    # a band of strokes, wide enough to take whole 8-px tokens from the example's boxes (later regions win ties)
    strokes = [((0.25, y), (0.7, y + 0.05)) for y in np.arange(0.35, 0.6, 0.03)]
    for start, end in strokes:
        drag(browser, board, image_point(board, CANVAS, zoom, *start), image_point(board, CANVAS, zoom, *end), 12)
    record = generate_and_download(page, downloads)
    screenshot(browser, tmp_path, "masks.png")
    region = record["spec"]["regions"][2]
    assert region["prompt"] == "a green circle" and "box" not in region
    mask = np.asarray(region["mask"], bool)

    def painted(radius):
        return np.any([capsule(mask.shape, np.multiply(start, 64), np.multiply(end, 64), radius)
                       for start, end in strokes], axis=0)

    brush = 12 / 6  # the brush's radius on the 384-px canvas, in pixels of the 64-px image
    assert (mask & painted(brush)).sum() / (mask | painted(brush)).sum() > 0.8, (mask.sum(), painted(brush).sum())
    assert not (mask & ~painted(brush + 1.5)).any()


def canvas_pixel(page, selector, fx, fy, image_size=CANVAS):
    """The RGB of the box canvas at fractions (fx, fy) of the image drawn centred on it at its own size."""
    return page.driver.execute_script("""
        const canvas = document.querySelector(arguments[0]);
        const x = Math.round(canvas.width / 2 + (arguments[1] - 0.5) * arguments[3]);
        const y = Math.round(canvas.height / 2 + (arguments[2] - 0.5) * arguments[4]);
        return Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3));
    """, selector, fx, fy, *image_size)


def test_page_a_saved_spec_loads_back_onto_the_canvas(served, client, browser, tmp_path):
    editor = {"background": None, "layers": [handle_file(str(layer_file(tmp_path, right_half())))],
              "composite": None}
    rows = [["a red circle", "", 0.0, 0.0, 0.3, 0.4], ["a blue square", "", None, None, None, None]]
    saved = client.predict(table(rows), "", BASE, 0.5, "", None, None, editor, 2, api_name="/save_spec")
    page = Page(browser, served[1])
    board = "#box-canvas canvas"
    page.wait.until(lambda d: d.find_elements("css selector", board))
    assert canvas_pixel(page, board, 0.15, 0.2) == canvas_pixel(page, board, 0.15, 0.8)  # one box over both
    page.find("#load-spec").find_element("xpath", "preceding-sibling::input[@type='file']").send_keys(
        f"{saved[0]}\n{saved[2]}")
    page.wait.until(lambda d: page.cell(0, 4).text.splitlines()[0] == "0.3")
    inside, outside = canvas_pixel(page, board, 0.15, 0.2), canvas_pixel(page, board, 0.15, 0.8)
    assert inside[0] - inside[1] > 40 and max(outside) - min(outside) < 10, (inside, outside)  # red box on grey
    browser.find_element("xpath", "//button[@role='tab'][normalize-space()='Masks']").click()
    page.wait.until(lambda d: "2 · a blue square (mask)" in [label.text for label in
                                                               d.find_elements("css selector", "#painting label")])


def test_page_a_segment_clicked_becomes_a_region(served, browser, downloads, tmp_path):
    from attnkit.shapes.data import random_scene

    studio, url = served
    scene = random_scene(1, 1)  # a drawn shape on a plain ground
    png = str(tmp_path / "scene.png")
    Image.fromarray(scene.image).save(png)
    _, found = studio.segment_regions(png, scene.caption, 0, None, 0.15, progress=lambda *a, **k: None)
    page = Page(browser, url)
    browser.find_element("xpath", "//button[@role='tab'][normalize-space()='Regions from an image']").click()
    page.find("#regions-source input[type=file]").send_keys(png)
    page.fill("#regions-prompt", scene.caption)
    page.fill("#regions-threshold", "0.15")
    page.find("#regions-segment").click()
    page.wait_for_new_image("#regions-segments")
    shown = page.find("#regions-segments img")
    page.wait.until(lambda d: shown.get_attribute("naturalWidth") == str(SHOWN_SIDE))
    from scipy.ndimage import distance_transform_edt
    from selenium.webdriver.common.action_chains import ActionChains

    assert len(found["names"]) > 1
    shape = min(range(len(found["names"])), key=lambda i: (found["labels"] == i).sum())  # takes some tokens only
    depth = distance_transform_edt(found["labels"] == shape)
    y, x = np.unravel_index(depth.argmax(), depth.shape)  # its pixel farthest inside

    scale = shown.size["width"] / SHOWN_SIDE
    ActionChains(browser).move_to_element_with_offset(
        shown, ((x + 0.5) * 6 - SHOWN_SIDE / 2) * scale, ((y + 0.5) * 6 - SHOWN_SIDE / 2) * scale).click().perform()
    page.wait.until(lambda d: rows_shown(page) == 3)
    picked = found["labels"][y, x]
    assert page.cell(2, 0).text.strip() == (found["names"][picked] or "")
    if not page.cell(2, 0).text.strip():
        page.edit_cell(2, 0, "a shape")
    screenshot(browser, tmp_path, "regions-from-image.png")
    region = generate_and_download(page, downloads)["spec"]["regions"][2]
    assert np.array_equal(np.asarray(region["mask"], bool), found["labels"] == picked)


def test_page_bad_uploads_are_messages_and_the_page_generates_after_them(served, browser, downloads, tmp_path):
    page = Page(browser, served[1])
    spec = tmp_path / "outside.yaml"
    spec.write_text("regions:\n  - {prompt: a red circle, mask: /etc/hostname}\n")
    def background():
        return page.find("#canvas-background input[type=file]")

    def spec_input():
        return page.find("#load-spec").find_element("xpath", "preceding-sibling::input[@type='file']")

    uploads = [(background, path, message) for path, message in bad_uploads(tmp_path)]
    uploads.append((spec_input, spec, "mask '/etc/hostname' points outside the upload"))
    for field, path, message in uploads:
        for close in browser.find_elements("css selector", ".toast-close"):
            close.click()
        page.wait.until(lambda d: not page.error_text())
        field().send_keys(str(path))
        page.wait.until(lambda d, message=message: message in page.error_text())
        if field is background:
            browser.find_element("css selector", "#canvas-background button[aria-label='Clear']").click()
    assert "Traceback" not in browser.page_source
    screenshot(browser, tmp_path, "bad-upload.png")
    for close in browser.find_elements("css selector", ".toast-close"):
        close.click()
    page.wait.until(lambda d: not page.error_text())
    assert generate_and_download(page, downloads)["command"] == "regional"


def test_under_16_concurrent_then_100_sequential_requests_every_image_equals_its_request_alone_and_nothing_piles_up(
        served, tmp_path, monkeypatch):
    """benchmarks/ui_load.py runs the same measurement at any size and reports its figures."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ui_load", Path(__file__).parent.parent / "benchmarks" / "ui_load.py")
    ui_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ui_load)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # this app's Gradio files apart, to be measured
    app, studio, url = ui_load.serve(MODEL, served[0].pipe, tmp_path / "requests")
    try:
        figures = ui_load.measure(url, studio, tmp_path / "gradio", concurrent=16, sequential=100, steps=2)
    finally:
        app.close()
    assert figures["mismatched"] == []
    assert figures["open_files"]["end"] <= figures["open_files"]["start"], figures["open_files"]
    temp = figures["temp_bytes"]
    assert temp["served"] > temp["start"] and temp["after_keeper"] == temp["start"], temp
    memory = figures["resident_mb"]
    assert memory["last"] - memory["tenth"] < 30, memory  # no growth beyond allocator noise over the 100


def test_switching_the_painted_region_keeps_what_was_painted_and_a_new_region_adds_a_row(served):
    studio, _ = served
    painted = {"background": None, "layers": [canvas.mask_layer(right_half(), CANVAS, 1)], "composite": None}
    rows, masks, editing, editor, _ = studio.switch_region(0, ROWS, None, None, None, painted, 1, {})
    assert len(rows) == 3 and rows[2] == ["", "", None, None, None, None] and editing == 3
    assert np.array_equal(masks[1][::6, ::6], right_half())
    assert not canvas.mask_from_layer(editor["layers"][0]).any()  # the new region's layer starts empty
    _, masks, editing, editor, _ = studio.switch_region(1, rows, None, None, None, editor, 3, masks)
    assert editing == 1 and np.array_equal(canvas.mask_from_layer(editor["layers"][0])[::6, ::6], right_half())


def test_an_uploaded_mask_becomes_the_painted_regions_mask_and_clears_its_box(served, tmp_path):
    studio, _ = served
    mask = tmp_path / "mask.png"
    Image.fromarray(right_half().astype(np.uint8) * 255).save(mask)
    rows, _, masks, _, _, _ = studio.upload_mask(str(mask), ROWS, None, None, None, None, 2, {})
    assert rows[1] == ["a blue square", "", None, None, None, None] and rows[0] == ROWS[0]
    assert np.array_equal(masks[2], right_half())
    black = tmp_path / "black.png"
    Image.new("L", (64, 64)).save(black)
    with pytest.raises(AttnkitError, match="the mask image is entirely black"):
        studio.upload_mask(str(black), ROWS, None, None, None, None, 2, {})
