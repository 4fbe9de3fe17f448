"""Fixtures for the loratune binding tests.

Environment:
  LORATUNE_LIBRARY      the shared library to test (else the usual search)
  LORATUNE_TEST_MODEL   a Hugging Face model directory with data.jsonl (and data_golden.json) from
                        tests/python/make_models.py, e.g. llama-basic; without it a random model is used
  LORATUNE_INCLUDE_DIR  the public headers (default: ../../../include from this file)
"""
import os

import pytest

import loratune as lt

HERE = os.path.dirname(os.path.abspath(__file__))


def include_dir():
    d = os.environ.get("LORATUNE_INCLUDE_DIR") or os.path.join(HERE, "..", "..", "..", "include")
    return d if os.path.isfile(os.path.join(d, "loratune.h")) else None


@pytest.fixture(scope="session")
def ctx():
    with lt.Context(backend="cpu", n_threads=2) as c:
        yield c


@pytest.fixture
def model(ctx):
    with lt.experimental.create_random_model(ctx, lt.experimental.TINY_LLAMA, seed=7, init_std=0.05) as m:
        yield m


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A model directory on disk: $LORATUNE_TEST_MODEL, or a random model saved with the experimental API."""
    env = os.environ.get("LORATUNE_TEST_MODEL")
    if env:
        return env
    d = str(tmp_path_factory.mktemp("model") / "tiny")
    with lt.Context(backend="cpu") as c, lt.experimental.create_random_model(c, lt.experimental.TINY_LLAMA, seed=3) as m:
        lt.experimental.save_model(m, d)
    return d


def rows(n=4, T=16, vocab=128, start=0):
    """Deterministic token rows that are easy to learn (arithmetic sequences)."""
    return [[(start + r * 7 + t * (r + 1)) % vocab for t in range(T)] for r in range(n)]
