"""Evaluation during training: the validation split (metadata, never trained on), the held-out
raster eval step, the digits FID, sample quality per run (Inception FID/IS with random weights)
and the one-line errors raised before training starts."""

import json
import math
import os

import jax
import numpy as np
import pytest

from rar_jax.data import holdout, pipeline, records
from rar_jax.evaluation import sample_eval
from rar_jax.model import presets, rar
from rar_jax.tools import sweeps
from rar_jax.training import eval_step, optim, train, train_state
from tests.helpers import train_worker


@pytest.fixture()
def split_dir(tmp_path):
  data_dir = train_worker.write_random_dataset(str(tmp_path / "data"))
  holdout.add_split(data_dir, count=21, seed=3)
  return data_dir


def test_split_is_recorded_kept_and_never_replaced(split_dir):
  meta = records.read_metadata(split_dir)
  assert meta.validation == holdout.choose(96, 21, seed=3) and len(meta.validation.indices) == 21
  assert records.DatasetMetadata.from_json(meta.to_json()) == meta
  assert holdout.add_split(split_dir, count=21, seed=3) == meta  # the same split: a no-op
  with pytest.raises(ValueError, match=r"metadata.json already has a validation split"):
    holdout.add_split(split_dir, count=20, seed=3)
  assert records.read_metadata(split_dir) == meta  # untouched


def test_training_never_reads_the_validation_split(split_dir):
  source = records.TokenRecordSource(split_dir)
  held = set(records.read_metadata(split_dir).validation.indices)
  kept = holdout.training_source(split_dir)
  expected = [i for i in range(len(source)) if i not in held]
  assert len(kept) == len(expected) == 75
  for j, i in enumerate(expected):
    np.testing.assert_array_equal(kept[j]["tokens"], source[i]["tokens"])
  tokens, _ = holdout.validation_arrays(split_dir)
  held_rows = {row.tobytes() for row in tokens}
  batches = pipeline.make_dataset(split_dir, global_batch=15, seed=0, num_epochs=1)
  seen = [row.tobytes() for batch in batches for row in batch["tokens"]]
  assert len(seen) == 75 and not held_rows & set(seen)


def test_bad_split_in_metadata_is_named(split_dir):
  path = os.path.join(split_dir, records.METADATA_FILENAME)
  raw = json.loads(open(path).read())
  raw["validation"]["indices"] = [5, 3]
  with pytest.raises(ValueError, match=r"metadata.json: validation.indices must be strictly"):
    records.DatasetMetadata.from_json(json.dumps(raw), where=path)


@pytest.mark.slow
def test_heldout_eval_is_the_raster_loss_of_the_whole_split(split_dir):
  """Every held-out record counted once (21 records: two batches of 16, 11 padding rows)."""
  config = train_worker.tiny_config(split_dir, 1)
  plan = train.resolve(config)
  tx, _ = optim.make_optimizer(config.optim, plan.model, 1)
  abstract = train_state.abstract_state(plan.model, tx, plan.mesh)
  state = train_state.init_sharded(plan.model, tx, 0, plan.mesh)
  got = eval_step.HeldOutEval(split_dir, plan.model, plan.mesh, abstract.params, 16)(state.params)

  tokens, labels = holdout.validation_arrays(split_dir)
  params = jax.device_get(state.params)
  logits = np.asarray(rar.forward(plan.model, params, tokens, labels))[:, :-1]  # [21, L, V]
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
  logp -= logits.max(-1, keepdims=True)
  loss = -np.take_along_axis(logp, tokens[..., None], -1).mean()
  accuracy = (logits.argmax(-1) == tokens).mean()
  assert got["heldout_raster_loss"] == pytest.approx(loss, rel=1e-5)
  assert got["heldout_raster_accuracy"] == pytest.approx(accuracy, abs=1e-6)
  assert got["heldout_raster_bits_per_token"] == pytest.approx(loss / math.log(2), rel=1e-5)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # dead ReLU units: rank-deficient
def test_digits_fid_separates_real_from_noise():
  from sklearn.datasets import load_digits

  from rar_jax.evaluation import digits_fid

  digits = load_digits()
  images = np.repeat((digits.images / 16 * 255).astype(np.uint8)[..., None], 3, axis=-1)
  metric = digits_fid.DigitsFID(images[:1000], digits.target[:1000], images[1500:])
  real = metric(images[1000:1500])
  noise = metric(np.random.default_rng(0).integers(0, 256, (500, 8, 8, 3), np.uint8))
  mirrored = metric(images[1000:1500, :, ::-1])
  half_the_classes = metric(images[1000:1500][digits.target[1000:1500] < 5])
  assert metric.features(images[:3]).shape == (3, digits_fid.HIDDEN)
  assert real < noise / 10 and real < mirrored / 2 and real < half_the_classes / 2


def test_no_validation_split_with_eval_on_is_named_before_training(tmp_path):
  data_dir = train_worker.write_random_dataset(str(tmp_path / "data"))
  config = train_worker.tiny_config(data_dir, 4)
  config.eval.every_steps = 2
  with pytest.raises(ValueError, match=r"data/metadata.json has no validation split"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # nothing written


def _pixel_config(data_dir):
  """The tiny model on 4x4 pixel-tokenized images (17 codes), so samples decode."""
  config = train_worker.tiny_config(data_dir, 2)
  config.model.codebook_size = 17
  config.tokenizer.kind, config.image_size = "pixel", 4
  config.checkpoint.every_steps = 2
  return config


@pytest.fixture(scope="module")
def pixel_data(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("pixel_data"))
  spec = records.RecordSpec(seq_len=16, codebook_size=17, num_classes=10)
  rng = np.random.default_rng(0)
  shard = train_worker.write_shard(
    os.path.join(data_dir, records.shard_filename("train", 0, 0)),
    spec,
    rng.integers(0, 17, (64, 16)),
    np.arange(64) % 10,
  )
  meta = records.DatasetMetadata("pixel", 16, 17, 10, 64, "none", "test", (shard,))
  records.write_metadata(data_dir, meta)
  holdout.add_split(data_dir, count=16, seed=0)
  return data_dir


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
  from tests.evaluation import test_fid

  path = tmp_path_factory.mktemp("inception") / "random_inception.npz"
  np.savez(path, **test_fid._official_random_state(seed=1))
  return str(path)


@pytest.mark.parametrize(
  ("weights", "reference", "message"),
  [
    ("missing.pth", None, r"eval.inception_weights='.*missing.pth': file not found"),
    (None, "missing.npz", r"eval.fid_reference='.*missing.npz': file not found"),
    (None, "wrong_size", r"eval.fid_reference=.*wrong.npz: mu has shape \(64,\).* are 2048"),
  ],
)
def test_bad_fid_inputs_are_named_before_training(
  tmp_path, pixel_data, inception_file, weights, reference, message
):
  wrong = tmp_path / "wrong.npz"
  np.savez(wrong, mu=np.zeros(64), sigma=np.eye(64))
  config = _pixel_config(pixel_data)
  config.eval.fid_samples = 8
  config.eval.inception_weights = str(tmp_path / weights) if weights else inception_file
  missing = reference not in (None, "wrong_size")
  config.eval.fid_reference = str(tmp_path / reference if missing else wrong)
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_fid_per_run_end_to_end_with_random_inception(tmp_path, pixel_data, inception_file):
  """The ImageNet path in miniature: FID/IS of the run's samples against a reference batch
  (images; statistics computed) at fid_every and at the end, held-out loss every step, all
  in TensorBoard and sample_quality.json, read back by the sweep collector."""
  reference = tmp_path / "reference.npz"
  np.savez(reference, arr_0=np.random.default_rng(0).integers(0, 256, (12, 4, 4, 3), np.uint8))
  config = _pixel_config(pixel_data)
  config.train.steps, config.eval.every_steps = 2, 1
  config.eval.fid_samples, config.eval.fid_every = 10, 1
  config.eval.inception_weights, config.eval.fid_reference = inception_file, str(reference)
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))

  history = json.loads((workdir / sample_eval.QUALITY_FILE).read_text())
  assert [h["step"] for h in history] == [1, 2]
  assert all(h["num_samples"] == 10 and h["features"] == "inception" for h in history)
  assert all(math.isfinite(h["fid"]) and h["fid"] > 0 for h in history)
  assert all(1.0 <= h["inception_score"] <= 10.0 for h in history)
  from rar_jax.tools import sweep_results

  (result,) = [r for r in sweep_results.collect(str(tmp_path)) if r.name == "run"]
  assert result.heldout_steps == [1, 2] and result.quality["fid"] == history[-1]["fid"]
  scalars = sweep_results.read_scalars(str(workdir), ("sample_fid", "sample_inception_score"))
  assert list(scalars["sample_fid"]) == [1, 2]
  assert sweeps.SAMPLE_QUALITY == sample_eval.QUALITY_FILE


def test_imagenet_config_scores_samples_only_with_weights():
  from configs import imagenet

  config = imagenet.get_config("B")
  assert config.eval.every_steps > 0 and config.eval.fid_samples > 0
  assert not sample_eval.enabled(config.eval)
  config.eval.inception_weights = "pt_inception.pth"
  assert sample_eval.enabled(config.eval)
  with pytest.raises(FileNotFoundError, match=r"eval.inception_weights='pt_inception.pth'"):
    sample_eval.check_config(config.eval)
  assert presets.resolve(config.model).seq_len == 256
