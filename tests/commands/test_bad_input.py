"""Bad input is refused in one line naming the key, value or file (issue 13, item 9): config
values (optim, randomness, sampling), class ids of the sampling API, official weights, images
given to the evaluator, corrupt .npz files and empty JSONL files. The command-line side (one
line on stderr, exit status 2) is tested in test_cli.py."""

import json

import numpy as np
import pytest

from rar_jax.data import pretokenize, records
from rar_jax.evaluation import fid
from rar_jax.model import convert, presets
from rar_jax.sampling import decoding
from rar_jax.training import optim, randomization, train
from tests.helpers import train_worker

CFG = presets.resolve(
  dict(width=32, depth=2, heads=4, mlp_dim=64, seq_len=16, codebook_size=32, num_classes=10)
)


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("optim.lr", -1.0, r"optim.lr must be > 0, got -1.0"),
    ("optim.lr", 0.0, r"optim.lr must be > 0, got 0.0"),
    ("optim.end_lr", -1e-5, r"optim.end_lr must be >= 0"),
    ("optim.warmup_steps", -3, r"optim.warmup_steps must be an integer >= 0, got -3"),
    ("optim.b1", 1.0, r"optim.b1 must be in \[0, 1\), got 1.0"),
    ("optim.b2", -0.1, r"optim.b2 must be in \[0, 1\)"),
    ("optim.eps", 0.0, r"optim.eps must be > 0"),
    ("optim.weight_decay", -0.03, r"optim.weight_decay must be >= 0"),
    ("optim.grad_clip_norm", 0.0, r"optim.grad_clip_norm must be > 0"),
    ("optim.lr", float("nan"), r"optim.lr must be > 0, got nan"),
    ("randomness.label_dropout", 1.5, r"randomness.label_dropout must be in \[0, 1\), got 1.5"),
    ("randomness.label_dropout", -0.1, r"randomness.label_dropout must be in \[0, 1\)"),
    ("randomness.anneal_start_steps", -5, r"randomness.anneal_start_steps must be >= 0, got -5"),
    ("randomness.anneal_end_fraction", -0.5, r"anneal_end_fraction must be in \[0, 1\]"),
    ("sampling.guidance_scale", -1.0, r"sampling.guidance_scale must be >= 0 .*got -1.0"),
    ("sampling.temperature", 0.0, r"sampling.temperature must be > 0"),
  ],
)
def test_config_values_are_checked_by_resolve(tmp_path, key, value, message):
  config = train_worker.tiny_config(str(tmp_path), 10)
  group, name = key.split(".")
  config[group][name] = value
  with pytest.raises(ValueError, match=message):
    train.resolve(config)


def test_the_default_configs_pass():
  from configs import digits, imagenet  # noqa: PLC0415

  for config in (digits.get_config(), imagenet.get_config("B")):
    optim.validate(config.optim)
    randomization.check_label_dropout(config.randomness.label_dropout)
    decoding.SamplingConfig.from_group(config.sampling)


@pytest.mark.parametrize("bad", [10, -1, 11])
def test_class_ids_outside_the_classes_are_refused(bad):
  ids = np.array([0, 3, bad, 9])
  message = rf"class id {bad} \(at index 2\) is outside \[0, 10\)"
  settings = decoding.SamplingConfig()
  with pytest.raises(ValueError, match=message):
    decoding.generate(CFG, {}, ids, None, settings)  # refused before anything is traced
  with pytest.raises(ValueError, match=message):
    decoding.score(CFG, {}, np.zeros((4, 16), np.int32), ids, settings)
  with pytest.raises(ValueError, match=message):
    decoding.make_sampler(CFG, settings)({}, ids, None)
  with pytest.raises(ValueError, match="class_ids must be integers"):
    decoding.generate(CFG, {}, np.array([0.5]), None, settings)


def _official(cfg):
  return {k: np.full(s, 0.01, np.float32) for k, s in convert.official_shapes(cfg).items()}


def test_official_weights_with_nan_or_integer_tensors_are_refused():
  state = _official(CFG)
  convert.from_official(state, CFG)  # finite floats load
  nan = {**state, "blocks.1.mlp.fc1.weight": np.full((64, 32), np.nan, np.float32)}
  with pytest.raises(ValueError, match=r"key 'blocks\.1\.mlp\.fc1\.weight' has 2048 of 2048"):
    convert.from_official(nan, CFG)
  ints = {**state, "lm_head.weight": np.ones((32, 32), np.int64)}
  with pytest.raises(ValueError, match=r"key 'lm_head\.weight' has dtype int64, not a float"):
    convert.from_official(ints, CFG)


class _CountingExtractor:
  """An extractor that must not be called: the inputs are refused before."""

  calls = 0

  def __call__(self, images):
    self.calls += 1
    raise AssertionError("Inception ran on unchecked input")


@pytest.mark.parametrize(
  "samples, message",
  [
    (np.full((4, 8, 8, 3), 0.5, np.float32), r"samples\.npz: arr_0 has dtype float32"),
    (np.ones((4, 8, 8, 3), np.uint8), r"samples\.npz: the first 4 images only hold values 0 and 1"),
    (np.zeros((4, 8, 8), np.uint8), r"samples\.npz: arr_0 must be non-empty images"),
  ],
)
def test_bad_sample_images_are_named_before_any_inception_pass(tmp_path, samples, message):
  np.savez(tmp_path / "ref.npz", arr_0=np.full((4, 8, 8, 3), 128, np.uint8))
  np.savez(tmp_path / "samples.npz", arr_0=samples)
  extractor = _CountingExtractor()
  with pytest.raises(ValueError, match=message):
    fid.evaluate(tmp_path / "samples.npz", tmp_path / "ref.npz", extractor)
  assert extractor.calls == 0


@pytest.mark.parametrize("cut", [30, 200])
def test_corrupt_npz_is_named(tmp_path, cut):
  path = tmp_path / "ref.npz"
  np.savez(path, arr_0=np.full((4, 8, 8, 3), 128, np.uint8), mu=np.zeros(3))
  path.write_bytes(path.read_bytes()[:-cut])
  with pytest.raises(ValueError, match=r"ref\.npz: corrupt \.npz file"):
    fid.check_images(path)


def test_empty_jsonl_is_named(tmp_path):
  path = tmp_path / "maskgitvq.jsonl"
  path.write_text("")
  spec = records.RecordSpec(4, 8, 2)
  with pytest.raises(ValueError, match=f"JSONL file {path} is empty"):
    pretokenize.JsonlSource(str(path), spec)
  path.write_text(json.dumps({"class_id": 0, "tokens": [0, 1, 2, 3]}) + "\n")
  assert len(pretokenize.JsonlSource(str(path), spec)) == 1


def test_unknown_config_key_with_a_near_match_is_one_line_with_the_hint():
  import ml_collections  # noqa: PLC0415

  from rar_jax.infra import user_errors  # noqa: PLC0415

  config = ml_collections.ConfigDict({"train": {"steps": 3}})
  with pytest.raises(AttributeError) as caught:
    config.train.stepz  # noqa: B018
  message = user_errors.describe(caught.value, ["--config.train.stepz=3"])
  assert message == (
    "unknown config key 'stepz' (in --config.train.stepz=3); "
    'Did you mean "steps" instead of "stepz"?'
  )
