"""Tests for rar_jax.data.augment and rar_jax.data.pretokenize (tiny random VQGAN, 8 CPU
devices)."""

import concurrent.futures
import json
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from rar_jax.data import augment, pretokenize, records
from rar_jax.tokenizers import vqgan

TINY = vqgan.VQGANConfig(
  hidden_channels=32,
  channel_mult=(1, 1, 2),
  num_res_blocks=1,
  z_channels=8,
  codebook_size=16,
  resolution=16,
)
SIZES = [(20, 30), (40, 17), (16, 16)]  # (width, height) of each class's images


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """Random TINY weights in the official state_dict layout, as .npz (no jit of `init`)."""
  rng = np.random.default_rng(0)
  state = {}
  for key, shape in vqgan.official_shapes(TINY).items():
    if ".norm" in key:
      state[key] = np.full(shape, 1.0 if key.endswith("weight") else 0.0, np.float32)
    else:  # conv (fan_in = in * kh * kw), bias or codebook
      fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else 1
      state[key] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
  path = tmp_path_factory.mktemp("weights") / "tiny_vqgan.npz"
  np.savez(path, **state)
  return str(path)


@pytest.fixture(scope="module")
def tokenizer(weights):
  return vqgan.Tokenizer(TINY, vqgan.load_official(weights, TINY))


def _random_image(rng, width, height):
  return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def folder(tmp_path):
  """2 classes x 3 images (JPEG and PNG, different sizes) -> root path."""
  rng = np.random.default_rng(0)
  for c, cls in enumerate(["cat", "dog"]):
    os.makedirs(tmp_path / "images" / cls)
    for i, (w, h) in enumerate(SIZES):
      ext = "png" if (c + i) % 2 else "jpg"
      _random_image(rng, w + c, h).save(tmp_path / "images" / cls / f"img{i}.{ext}")
  return str(tmp_path / "images")


def _config(source, **overrides):
  config = pretokenize.make_config(source)
  config.update(dict(image_size=16, batch_size=16, records_per_shard=2, num_workers=2))
  config.update(overrides)
  return config


def _records(data_dir):
  source = records.TokenRecordSource(data_dir)
  items = [source[i] for i in range(len(source))]
  return np.stack([r["tokens"] for r in items]), np.array([r["label"] for r in items])


def _mtimes(data_dir):
  return {n: os.stat(os.path.join(data_dir, n)).st_mtime_ns for n in os.listdir(data_dir)}


# ---------------------------------------------------------------------------------------------
# Augmentations.


def test_center_crop_arr_box_then_bicubic():
  image = _random_image(np.random.default_rng(1), 1000, 600)
  crop = augment.center_crop_arr(image, 256)
  half = image.resize((500, 300), Image.Resampling.BOX)  # 600 >= 512: halve once
  expected = np.asarray(half.resize((427, 256), Image.Resampling.BICUBIC))[:, 85:341]
  np.testing.assert_array_equal(crop, expected)


def test_center_crop_flip():
  image = _random_image(np.random.default_rng(2), 50, 40)
  crops = augment.center_crop_flip(image, 32)
  assert crops.shape == (2, 32, 32, 3) and crops.dtype == np.uint8
  np.testing.assert_array_equal(crops[0], augment.center_crop_arr(image, 32))
  np.testing.assert_array_equal(crops[1], crops[0][:, ::-1])


def test_ten_crop_matches_torchvision_layout():
  image = _random_image(np.random.default_rng(3), 600, 500)
  crops = augment.ten_crop(image, 256)
  big = augment.center_crop_arr(image, 281)
  assert crops.shape == (10, 256, 256, 3) and crops.dtype == np.uint8
  # Five crops: tl, tr, bl, br, center (offset round(12.5) = 12).
  for k, (y, x) in enumerate([(0, 0), (0, 25), (25, 0), (25, 25), (12, 12)]):
    np.testing.assert_array_equal(crops[k], big[y : y + 256, x : x + 256])
  # The flipped image's five crops: its tl is the mirrored tr, and so on.
  for k, mirrored in enumerate([1, 0, 3, 2]):
    np.testing.assert_array_equal(crops[5 + k], crops[mirrored][:, ::-1])
  np.testing.assert_array_equal(crops[9], big[12:268, 13:269][:, ::-1])


def test_augmentation_registry():
  assert {n: a.num_crops for n, a in augment.AUGMENTATIONS.items()} == {
    "center_crop_flip": 2,
    "ten_crop": 10,
    "none": 1,
  }
  assert augment.get_augmentation("none").apply(np.ones((8, 8)), 8).shape == (1, 8, 8)
  with pytest.raises(ValueError, match="unknown augmentation"):
    augment.get_augmentation("random_crop")


# ---------------------------------------------------------------------------------------------
# Image sources.


def test_image_folder(folder, tmp_path, weights, tokenizer):
  out = str(tmp_path / "out")
  config = _config("image_folder", path=folder, augmentation="center_crop_flip")
  config.tokenizer.weights = weights  # built by run from the config, not injected
  config.tokenizer.vqgan.update({**vars(TINY), "channel_mult": TINY.channel_mult})
  meta = pretokenize.run(config, out)
  assert meta == records.read_metadata(out)
  assert (meta.num_records, meta.num_classes, meta.seq_len, meta.codebook_size) == (12, 2, 16, 16)
  assert (meta.tokenizer, meta.augmentation) == (tokenizer.name, "center_crop_flip")
  assert [s.num_records for s in meta.shards] == [4, 4, 4]
  tokens, labels = _records(out)
  np.testing.assert_array_equal(labels, [0] * 6 + [1] * 6)
  assert len(np.unique(tokens)) >= 4  # the random tokenizer does tell images apart
  files = pretokenize.ImageFolderSource(folder).files
  crops = np.concatenate([augment.center_crop_flip(Image.open(f), 16) for f in files])
  padded = np.zeros((16, 16, 16, 3), np.float32)  # a multiple of the 8 devices
  padded[:12] = crops / 255.0
  np.testing.assert_array_equal(tokens, np.asarray(tokenizer.encode(padded))[:12])


def test_bad_inputs(folder, tmp_path, tokenizer):
  out = str(tmp_path / "out")
  with pytest.raises(FileNotFoundError, match="image folder not found"):
    pretokenize.run(_config("image_folder", path=str(tmp_path / "nope")), out, tokenizer=tokenizer)
  with pytest.raises(FileNotFoundError, match="VQGAN weights not found"):
    pretokenize.run(_config("image_folder", path=folder), out)
  bad = os.path.join(folder, "cat", "img1_broken.jpg")  # item 2: in the second shard
  with open(bad, "wb") as f:
    f.write(b"not a jpeg")
  with pytest.raises(ValueError, match=f"cannot read image {bad}"):
    pretokenize.run(_config("image_folder", path=folder), out, tokenizer=tokenizer)
  names = sorted(os.listdir(out))  # shards before the bad image stay; no partial files
  assert names == ["pretokenize_plan.json", "train-00000-00000.array_record"]


def test_tfds_and_folder_give_the_same_records(tmp_path, tokenizer):
  with tfds.testing.mock_data(num_examples=5):
    ds = tfds.data_source("imagenet2012", split="train")
    for c in range(1000):  # every class folder, so folder labels equal TFDS labels
      os.makedirs(tmp_path / "folder" / f"c{c:03d}")
    for i in range(len(ds)):
      example = ds[i]
      path = tmp_path / "folder" / f"c{example['label']:03d}" / f"{i}.png"
      Image.fromarray(example["image"]).save(path)
    meta = pretokenize.run(_config("imagenet_tfds"), str(tmp_path / "tfds"), tokenizer=tokenizer)
  folder_config = _config("image_folder", path=str(tmp_path / "folder"))
  folder_meta = pretokenize.run(folder_config, str(tmp_path / "fold"), tokenizer=tokenizer)
  assert meta.num_records == folder_meta.num_records == 50  # 5 images x 10 crops
  assert meta.num_classes == folder_meta.num_classes == 1000
  assert meta.source == "tfds:imagenet2012/train"

  def by_label(data_dir):  # the folder path orders images by class
    tokens, labels = _records(data_dir)
    return sorted(zip(labels.tolist(), map(bytes, tokens.astype(np.uint8)), strict=True))

  assert by_label(str(tmp_path / "tfds")) == by_label(str(tmp_path / "fold"))


# ---------------------------------------------------------------------------------------------
# JSONL.


def _write_jsonl(path, lines):
  with open(path, "w") as f:
    f.writelines(line + "\n" for line in lines)


def test_jsonl_import(tmp_path):
  rng = np.random.default_rng(4)
  tokens = rng.integers(0, 1024, (5, 256))
  labels = rng.integers(0, 1000, 5)
  lines = [
    json.dumps({"class_id": int(c), "tokens": t.tolist()})
    for c, t in zip(labels, tokens, strict=True)
  ]
  _write_jsonl(tmp_path / "maskgitvq.jsonl", lines)
  config = _config("jsonl", path=str(tmp_path / "maskgitvq.jsonl"))
  meta = pretokenize.run(config, str(tmp_path / "out"))
  assert (meta.num_records, meta.seq_len, meta.codebook_size) == (5, 256, 1024)
  assert meta.tokenizer == "maskgit-vqgan-f16-256" and len(meta.shards) == 3
  got_tokens, got_labels = _records(str(tmp_path / "out"))
  np.testing.assert_array_equal(got_tokens, tokens)
  np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
  "bad, message",
  [
    ('{"class_id": 1, "tokens": [1, 2}', "line 3: invalid JSON"),
    ('{"class_id": 1, "tokens": [1, 2]}', "line 3: expected 4 tokens, got 2"),
    ('{"class_id": 1, "tokens": [1, 2, 3, 99]}', "line 3: token 99 is outside"),
    ('{"class_id": 1.5, "tokens": [1, 2, 3, 4]}', "line 3: tokens and class_id must be integers"),
  ],
)
def test_jsonl_bad_line(tmp_path, bad, message):
  good = json.dumps({"class_id": 0, "tokens": [0, 1, 2, 3]})
  _write_jsonl(tmp_path / "x.jsonl", [good, good, bad, good])
  config = _config("jsonl", path=str(tmp_path / "x.jsonl"))
  config.jsonl.update(dict(seq_len=4, codebook_size=8, num_classes=2))
  with pytest.raises(ValueError, match=message):
    pretokenize.run(config, str(tmp_path / "out"))
  assert not records.shard_is_complete(tmp_path / "out" / "train-00000-00001.array_record")
  assert not any(n.endswith(records.TMP_SUFFIX) for n in os.listdir(tmp_path / "out"))


# ---------------------------------------------------------------------------------------------
# Resuming, host split, digits.


def test_resume_rewrites_only_missing_shards(folder, tmp_path, tokenizer):
  out = str(tmp_path / "out")
  config = _config("image_folder", path=folder)
  pretokenize.run(config, out, tokenizer=tokenizer)
  before, first = _mtimes(out), _records(out)
  shard1 = os.path.join(out, records.shard_filename("train", 0, 1))
  os.remove(shard1)
  os.remove(os.path.join(out, records.METADATA_FILENAME))
  with open(shard1 + records.TMP_SUFFIX, "wb") as f:  # a crash's leftover
    f.write(b"half a shard")
  pretokenize.run(config, out, tokenizer=tokenizer)
  after = _mtimes(out)
  changed = {n for n in after if after[n] != before.get(n)}
  assert changed == {os.path.basename(shard1), records.METADATA_FILENAME}
  for got, want in zip(_records(out), first, strict=True):
    np.testing.assert_array_equal(got, want)
  pretokenize.run(config, out, tokenizer=tokenizer)  # complete: a no-op
  assert _mtimes(out) == after
  config.records_per_shard = 3
  with pytest.raises(ValueError, match="records_per_shard: 2 -> 3"):
    pretokenize.run(config, out, tokenizer=tokenizer)


def test_verify_names_bad_shards_and_a_rerun_rewrites_them(tmp_path, capsys):
  out = str(tmp_path / "digits")
  meta = pretokenize.ensure_digits(out)  # two shards and a validation split
  assert pretokenize.verify(out) == meta
  bad = os.path.join(out, meta.shards[1].file)
  with open(bad, "r+b") as f:
    f.seek(300)
    f.write(bytes(64))
  capsys.readouterr()
  listed = rf"^1 of 2 shards in {re.escape(out)} are bad \({meta.shards[1].file}; listed above\)"
  with pytest.raises(records.CorruptShardError, match=listed + ": delete them and rerun"):
    pretokenize.verify(out)
  assert capsys.readouterr().out.startswith(f"bad shard {bad}: shard {bad} is corrupt at record ")
  os.remove(bad)
  assert pretokenize.ensure_digits(out) == meta  # rewritten; the validation split kept
  assert pretokenize.verify(out) == meta


def test_two_hosts_split_the_shards(folder, tmp_path, tokenizer):
  config = _config("image_folder", path=folder)
  single = pretokenize.run(config, str(tmp_path / "one"), tokenizer=tokenizer)
  out = str(tmp_path / "two")
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = [
      pool.submit(
        pretokenize.run, config, out, process_index=i, process_count=2, tokenizer=tokenizer
      )
      for i in (1, 0)
    ]
    metas = [f.result() for f in futures]
  assert metas[0] == metas[1] == records.read_metadata(out)
  files = [s.file for s in metas[0].shards]
  assert files == [records.shard_filename("train", s % 2, s) for s in range(3)]
  assert metas[0].num_records == single.num_records == 60
  for got, want in zip(_records(out), _records(str(tmp_path / "one")), strict=True):
    np.testing.assert_array_equal(got, want)


def test_ensure_digits(tmp_path):
  out = str(tmp_path / "digits")
  meta = pretokenize.ensure_digits(out)
  assert (meta.num_records, meta.seq_len, meta.codebook_size, meta.num_classes) == (
    1797,
    64,
    17,
    10,
  )
  assert meta.augmentation == "none"
  tokens, labels = _records(out)
  digits = load_digits()
  np.testing.assert_array_equal(tokens, digits.images.reshape(-1, 64))
  np.testing.assert_array_equal(labels, digits.target)
  assert tokens.max() < 17 and set(labels.tolist()) == set(range(10))
  before = _mtimes(out)
  assert pretokenize.ensure_digits(out) == meta
  assert _mtimes(out) == before
