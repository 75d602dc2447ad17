"""Pre-tokenization configs:
`python -m rar_jax.data.pretokenize --config=configs/pretokenize.py:<arg>`.

The argument picks the source (default imagenet_tfds); every key can be overridden:

  # ImageNet prepared with TFDS (array_record), ten crops per image (the final models' data):
  python -m rar_jax.data.pretokenize --config=configs/pretokenize.py:imagenet_tfds \
    --config.data_dir=/data/tfds \
    --config.tokenizer.weights=/ckpt/maskgit-vqgan-imagenet-f16-256.bin --output_dir=/data/in1k
  # ILSVRC2012 train folder, center crop + flip (the ablations' data):
  python -m rar_jax.data.pretokenize --config=configs/pretokenize.py:image_folder \
    --config.path=/data/ILSVRC2012/train --config.augmentation=center_crop_flip \
    --config.tokenizer.weights=/ckpt/maskgit-vqgan-imagenet-f16-256.bin --output_dir=/data/in1k_cf
  # The released maskgitvq.jsonl (already tokens; ten crops):
  python -m rar_jax.data.pretokenize --config=configs/pretokenize.py:jsonl \
    --config.path=/data/maskgitvq.jsonl --output_dir=/data/in1k_official
  # scikit-learn digits, PixelTokenizer (what the training job's embedded default uses):
  python -m rar_jax.data.pretokenize --config=configs/pretokenize.py:digits \
    --output_dir=/data/digits

Keys:
  source              imagenet_tfds | image_folder | jsonl | digits
  path                image_folder root (class subfolders) or the JSONL file
  tfds_name, data_dir TFDS name and data_dir (imagenet_tfds; data_dir None = TFDS default)
  split               TFDS split; also the shard file prefix
  augmentation        ten_crop (10 records per image) | center_crop_flip (2) | none (1)
  image_size          crop size; also the VQGAN resolution (tokenizer.vqgan.resolution)
  batch_size          crops per tokenizer call, padded to a multiple of the local devices
  records_per_shard   source items (images or JSONL lines) per shard
  num_workers         threads that decode and crop images
  wait_timeout_s      how long a host waits for the other hosts' shards
  tokenizer           kind (vqgan | pixel), weights (.bin/.pt/.npz path; never downloaded),
                      levels (pixel), vqgan sizes (default: the released f16 model)
  jsonl               seq_len, codebook_size, num_classes, tokenizer_name of the JSONL tokens
"""

import ml_collections
from ml_collections.config_dict import placeholder

from rar_jax import tokenizers
from rar_jax.data.pretokenize import SOURCES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The defaults for source `arg` (default imagenet_tfds): the one place they are written
  (`rar_jax.data.pretokenize.make_config` reads them from here)."""
  source = arg or "imagenet_tfds"
  if source not in SOURCES:
    raise ValueError(f"unknown source {source!r}; use one of {list(SOURCES)}")
  c = ml_collections.ConfigDict()
  c.source = source
  c.path = placeholder(str)
  c.tfds_name = "imagenet2012"
  c.data_dir = placeholder(str)
  c.split = "train"
  c.augmentation = "ten_crop"
  c.image_size = 256
  c.batch_size = 256
  c.records_per_shard = 100_000 if source == "jsonl" else 10_000
  c.num_workers = 16
  c.wait_timeout_s = 24 * 3600.0
  c.tokenizer = tokenizers.default_config("vqgan")
  c.jsonl = ml_collections.ConfigDict(
    dict(seq_len=256, codebook_size=1024, num_classes=1000, tokenizer_name="maskgit-vqgan-f16-256")
  )
  if source == "digits":
    c.augmentation, c.image_size, c.records_per_shard = "none", 8, 1000
    c.tokenizer.kind = "pixel"
  return c
