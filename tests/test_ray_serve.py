"""deploy.ray_serve: the trained run as a Ray Serve deployment with two replicas on this machine
(a local Ray, no cluster), answering the uvicorn server's routes and shapes, with Ray's batching;
two seeds as one ensemble beside it, and an ensemble no server can batch refused before Ray starts.
Slow: Ray's start takes tens of seconds and a few GB of memory."""

import asyncio
import socket

import httpx
import numpy as np
import pytest

from budgetlora.deploy.predictor import load_predictor
from budgetlora.deploy.server import ServeSettings

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="Ray Serve is the optional extra `ray`: pip install 'budgetlora[ray]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_url(trained_run):
    from ray import serve

    from budgetlora.deploy.ray_serve import DEPLOYMENT_NAME, bind

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServeSettings(replicas=2, cpus_per_replica=0.5, ray_max_batch_size=8, api_key="k")
        serve.run(bind(trained_run[0], settings), name=DEPLOYMENT_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


AUTH = {"Authorization": "Bearer k"}


def test_two_replicas_run(ray_url):
    from ray import serve

    status = serve.status().applications["budgetlora"]
    deployment = next(iter(status.deployments.values()))
    assert sum(deployment.replica_states.values()) == 2 and deployment.replica_states.get("RUNNING") == 2


def test_ray_answers_the_same_shapes_and_probabilities(ray_url, trained_run):
    predictor = load_predictor(trained_run[0])
    single = httpx.post(ray_url + "/predict", json={"inputs": "stock market shares"}, headers=AUTH, timeout=60)
    batch = httpx.post(ray_url + "/predict", json={"inputs": ["football goal", "chip software"]}, headers=AUTH,
                       timeout=60)
    assert single.status_code == 200 and isinstance(single.json()[0], dict)
    assert len(single.json()) == len(predictor.label_names)
    assert len(batch.json()) == 2 and all(len(row) == len(predictor.label_names) for row in batch.json())
    expected = predictor.predict(["football goal"]).argmax(axis=1)[0]
    assert batch.json()[0][0]["label"] == predictor.label_names[expected]
    info = httpx.get(ray_url + "/info", headers=AUTH, timeout=60).json()
    assert info["engine"] == "ray" and info["labels"] == predictor.label_names


def test_ray_refuses_bad_input_and_a_missing_key_like_the_uvicorn_server(ray_url):
    assert httpx.post(ray_url + "/predict", content=b'{"inputs": ', headers=AUTH, timeout=60).status_code == 422
    assert httpx.post(ray_url + "/predict", json={"inputs": ""}, headers=AUTH, timeout=60).json()["error_type"] == "Empty"
    assert httpx.post(ray_url + "/predict", json={"inputs": "x"}, timeout=60).status_code == 401
    assert httpx.get(ray_url + "/health", timeout=60).status_code == 200


def test_concurrent_requests_all_answer_through_ray_batching(ray_url):
    async def run():
        async with httpx.AsyncClient(base_url=ray_url, headers=AUTH, timeout=60) as http:
            return await asyncio.gather(*(http.post("/predict", json={"inputs": f"goal team {i}"}) for i in range(24)))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 24


def test_two_seeds_serve_as_one_ensemble_on_ray(ray_url, trained_run, second_run):
    from ray import serve

    from budgetlora.deploy.ray_serve import bind
    from budgetlora.evaluation.metrics import softmax

    settings = ServeSettings(replicas=1, cpus_per_replica=0.5, api_key="k")
    serve.run(bind([trained_run[0], second_run], settings), name="ensemble", route_prefix="/ensemble")
    try:
        texts = ["stock market shares today", "football goal coach"]
        answer = httpx.post(f"{ray_url}/ensemble/predict", json={"inputs": texts}, headers=AUTH, timeout=60).json()
        info = httpx.get(f"{ray_url}/ensemble/info", headers=AUTH, timeout=60).json()
    finally:
        serve.delete("ensemble")
    members = [load_predictor(trained_run[0]), load_predictor(second_run)]
    expected = sum(softmax(m.predict(texts)) for m in members) / 2
    for row, probs in zip(answer, expected):
        got = {p["label"]: p["score"] for p in row}
        np.testing.assert_allclose([got[n] for n in members[0].label_names], probs, atol=1e-5)
    assert info["source"] == "ensemble of 2" and len(info["ensemble"]) == 2


def test_an_ensemble_of_other_lengths_is_refused_before_any_replica(trained_run, tiny_model_dir, synthetic_csv,
                                                                     tmp_path):
    from budgetlora.deploy.ray_serve import bind
    from budgetlora.errors import UserError
    from budgetlora.training.loop import train

    from .conftest import tiny_config

    shorter = tmp_path / "len16"
    train(tiny_config(tiny_model_dir, synthetic_csv, "model.max_length=16", "train.max_steps=2",
                      "train.report=false", "train.tracker=none"), shorter, log=lambda message: None)
    with pytest.raises(UserError, match="read text differently"):
        bind([trained_run[0], shorter], ServeSettings())
