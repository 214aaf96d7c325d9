"""ComfyUI's pure parts: the workflow (targets found by class or given, the graph a request
becomes, the config's errors), and the reading of ComfyUI's answers and frames."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends.comfyui import (
    BUILT_IN,
    build_prompt,
    capabilities_for,
    combo,
    decode_frame,
    error_from_response,
    find_targets,
    parse_history,
    queue_place,
)
from imagegate.backends.comfyui.wire import stats_detail
from imagegate.errors import BadResponse, ConfigError, Rejected
from imagegate.models import ImageRequest

from tests.conftest import make_settings


def test_the_built_in_graph_is_found_entirely_by_class() -> None:
    targets = find_targets(BUILT_IN, {})
    assert targets == {
        "seed": (("3", "seed"),), "steps": (("3", "steps"),), "guidance_scale": (("3", "cfg"),),
        "sampler": (("3", "sampler_name"),), "prompt": (("6", "text"),), "negative_prompt": (("7", "text"),),
        "width": (("5", "width"),), "height": (("5", "height"),), "n": (("5", "batch_size"),),
        "model": (("4", "ckpt_name"),),
    }


def test_build_prompt_fills_what_is_set_and_leaves_the_rest() -> None:
    targets = find_targets(BUILT_IN, {})
    request = ImageRequest(prompt="fox", width=512, height=384, seed=9, steps=12, sampler="dpmpp_2m")
    graph, seed = build_prompt(request, BUILT_IN, targets, checkpoint="m.safetensors")
    assert seed == 9 and graph["3"]["inputs"]["sampler_name"] == "dpmpp_2m" and graph["3"]["inputs"]["cfg"] == 7.0
    assert graph["4"]["inputs"]["ckpt_name"] == "m.safetensors" and BUILT_IN["4"]["inputs"]["ckpt_name"] == ""
    random_graph, random_seed = build_prompt(ImageRequest(prompt="fox"), BUILT_IN, targets, checkpoint=None)
    assert random_seed is not None and random_graph["3"]["inputs"]["seed"] == random_seed
    assert random_graph["4"]["inputs"]["ckpt_name"] == ""  # no checkpoint: left for the backend to decide


def test_two_samplers_leave_seed_and_steps_to_the_mapping() -> None:
    graph: dict[str, Any] = json.loads(json.dumps(BUILT_IN))
    graph["13"] = {**graph["3"], "inputs": {**graph["3"]["inputs"], "latent_image": ["3", 0]}}
    targets = find_targets(graph, {})  # a hires-fix pass: both samplers share the encoders
    assert "seed" not in targets and "steps" not in targets
    assert (targets["prompt"], targets["negative_prompt"]) == ((("6", "text"),), (("7", "text"),))
    assert targets["width"] == (("5", "width"),)
    mapped = find_targets(graph, {"seed": ["3.seed", "13.seed"]})
    assert mapped["seed"] == (("3", "seed"), ("13", "seed"))
    out, _ = build_prompt(ImageRequest(prompt="x", seed=4), graph, mapped, checkpoint="c")
    assert out["3"]["inputs"]["seed"] == out["13"]["inputs"]["seed"] == 4


def test_a_mapping_naming_a_missing_node_or_a_linked_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no node '99'"):
        find_targets(BUILT_IN, {"seed": "99.seed"})
    with pytest.raises(ConfigError, match=r"node 3 \(KSampler\) has no value input 'model' \(it has: seed, steps"):
        find_targets(BUILT_IN, {"seed": "3.model"})


def test_a_graph_where_nothing_takes_the_prompt_is_a_config_error() -> None:
    graph = {"1": {"class_type": "SomeCustomSampler", "inputs": {"prompt_g": "x"}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(ConfigError, match="no node of the workflow takes the prompt"):
        find_targets(graph, {})
    assert find_targets(graph, {"prompt": "1.prompt_g"})["prompt"] == (("1", "prompt_g"),)


@pytest.mark.parametrize(("content", "match"), [
    ('{"nodes": [], "links": [], "version": 0.4}', "UI's workflow format; export it with 'Save \\(API Format\\)'"),
    ("not json", "not JSON"),
    ('{"3": {"inputs": {}}}', "node '3' has no 'class_type'"),
])
def test_a_workflow_file_that_cannot_be_used_is_one_line_naming_it(
    tmp_path: Path, content: str, match: str
) -> None:
    (tmp_path / "wf.json").write_text(content)
    with pytest.raises(ConfigError, match=match) as caught:
        make_settings([{"name": "c", "kind": "comfyui", "workflow": "wf.json"}], tmp_path=tmp_path)
    assert "[[backend]] 'c': key 'workflow'" in str(caught.value) and str(tmp_path / "wf.json") in str(caught.value)


def test_a_missing_workflow_file_and_an_unknown_field_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        make_settings([{"name": "c", "kind": "comfyui", "workflow": "nope.json"}], tmp_path=tmp_path)
    with pytest.raises(ConfigError, match="unknown field 'cfg'"):
        make_settings([{"name": "c", "kind": "comfyui", "inputs": {"cfg": "3.cfg"}}], tmp_path=tmp_path)
    with pytest.raises(ConfigError, match=r"write \\?\"<node id>.<input name>\\?\""):
        make_settings([{"name": "c", "kind": "comfyui", "inputs": {"seed": "seed"}}], tmp_path=tmp_path)


def test_capabilities_follow_the_workflows_inputs() -> None:
    classes = {n: node["class_type"] for n, node in BUILT_IN.items()}
    caps = capabilities_for(find_targets(BUILT_IN, {}), classes, models=["a"], samplers=["euler"], source="s")
    assert set(caps.takes) == {"negative_prompt", "steps", "guidance_scale", "seed", "sampler", "model", "size"}
    assert caps.width is not None and (caps.width.min, caps.width.max, caps.width.step) == (16, 16384, 8)
    assert (caps.max_n, caps.formats, caps.models, caps.samplers) == (None, ("png",), ("a",), ("euler",))
    only_prompt = capabilities_for({"prompt": (("1", "text"),)}, {"1": "X"}, models=None, samplers=None, source="s")
    assert (only_prompt.takes, only_prompt.max_n) == ((), 1)


def test_validation_errors_name_each_node_and_the_old_shape_is_read_too() -> None:
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {"3": {"errors": [{"type": "value_bigger_than_max", "message": "Value 20000 bigger than max "
                                              "of 10000", "details": "steps", "extra_info": {}}],
                                  "dependent_outputs": ["9"], "class_type": "KSampler"}}}
    error = error_from_response(400, json.dumps(body).encode(), {}, backend="c")
    assert isinstance(error, Rejected)
    assert str(error).endswith("Prompt outputs failed validation; node 3 (KSampler): Value 20000 bigger than max of "
                               "10000: steps")
    old = error_from_response(400, b'{"error": "no prompt", "node_errors": []}', {}, backend="c")
    assert isinstance(old, Rejected) and str(old).endswith("no prompt")
    assert error_from_response(500, b"boom", {}, backend="c").kind == "server_error"


def test_history_records_are_read_with_their_images_and_errors() -> None:
    ok = {"p": {"outputs": {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]},
                            "12": {"images": [{"filename": "t.png", "subfolder": "", "type": "temp"}]}},
                "status": {"status_str": "success", "completed": True, "messages": []}}}
    entry = parse_history(ok, "p", backend="c")
    assert entry is not None and entry.images == [{"filename": "a.png", "subfolder": "", "type": "output"}]
    assert parse_history({}, "p", backend="c") is None
    failed = {"p": {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": [
        ["execution_error", {"node_id": "3", "node_type": "KSampler", "exception_type": "RuntimeError",
                             "exception_message": "boom"}]]}}}
    bad = parse_history(failed, "p", backend="c")
    assert bad is not None and bad.error and "failed at node 3 (KSampler): RuntimeError: boom" in bad.error
    with pytest.raises(BadResponse):
        parse_history([], "p", backend="c")


def test_queue_place_counts_from_the_next_to_run() -> None:
    body = {"queue_running": [[0, "r", {}, {}, []]], "queue_pending": [[5, "b", {}, {}, []], [2, "a", {}, {}, []]]}
    assert queue_place(body, "r") == ("running", None, 3)
    assert queue_place(body, "a") == ("pending", 1, 3)
    assert queue_place(body, "b") == ("pending", 2, 3)
    assert queue_place(body, "gone") == ("gone", None, 3)


def test_combo_lists_are_read_in_both_forms() -> None:
    v1 = {"KSampler": {"input": {"required": {"sampler_name": [["euler", "ddim"], {}]}}}}
    v3 = {"KSampler": {"input": {"required": {"sampler_name": ["COMBO", {"options": ["euler"]}]}}}}
    assert combo(v1, "KSampler", "sampler_name") == ["euler", "ddim"]
    assert combo(v3, "KSampler", "sampler_name") == ["euler"]
    assert combo({}, "KSampler", "sampler_name") is None


def test_binary_frames_are_decoded_by_their_event_type() -> None:
    jpeg = b"\xff\xd8\xffjpeg"
    plain = decode_frame(struct.pack(">II", 1, 2) + jpeg)
    assert plain is not None and (plain.format, plain.data, plain.prompt_id) == ("png", jpeg, None)
    meta = json.dumps({"prompt_id": "p", "image_type": "image/jpeg"}).encode()
    tagged = decode_frame(struct.pack(">II", 4, len(meta)) + meta + jpeg)
    assert tagged is not None and (tagged.format, tagged.prompt_id, tagged.data) == ("jpeg", "p", jpeg)
    assert decode_frame(struct.pack(">II", 3, 1) + b"3text") is None
    assert decode_frame(b"\0\0") is None


def test_system_stats_become_one_line() -> None:
    body = {"system": {"comfyui_version": "0.3.40"}, "devices": [{"name": "cuda:0", "vram_free": 2**30}]}
    assert stats_detail(body, backend="c") == "ComfyUI 0.3.40 on cuda:0 (1024 MiB free)"
    with pytest.raises(BadResponse):
        stats_detail({"devices": []}, backend="c")
