"""Defaults shared by every training config: the official RAR recipe
(docs/reference/official_code.md, training)."""

import ml_collections
from ml_collections.config_dict import placeholder

from rar_jax import tokenizers


def base_config() -> ml_collections.ConfigDict:
  """The official recipe at ImageNet scale; experiment configs override what differs."""
  c = ml_collections.ConfigDict()
  c.seed = 42

  c.model = ml_collections.ConfigDict()
  c.model.variant = "B"  # B, L, XL, XXL; explicit width/depth/heads/mlp_dim override it
  c.model.width = placeholder(int)
  c.model.depth = placeholder(int)
  c.model.heads = placeholder(int)
  c.model.mlp_dim = placeholder(int)
  c.model.seq_len = 256
  c.model.codebook_size = 1024
  c.model.num_classes = 1000
  c.model.dropout = 0.1
  c.model.attn_dropout = 0.1
  c.model.dtype = "bfloat16"  # compute dtype; parameters, logits and loss stay float32
  c.model.scan_layers = True
  c.model.remat_policy = "none"  # none | full | dots | dots_no_batch
  c.model.attention_blocks = 4  # query blocks of the causal attention (1: full [T, T] square)
  # Numeric paths, hand-written or library (rar_jax/model/numerics.py); "auto" = per backend.
  c.model.attention_impl = "auto"  # custom | autodiff | xla | pallas | cudnn
  c.model.layer_norm_impl = "auto"  # custom | flax
  c.model.gelu_dropout_impl = "auto"  # custom | autodiff
  c.model.linear_impl = "auto"  # flat | dot_general
  c.model.split_impl = "auto"  # chunked | fused
  c.model.decode_attention_impl = "auto"  # segmented | pallas (sampling's KV-cache attention)

  # r = 1 until the anneal start, linear to 0 at its end, as fractions of train.steps (the
  # official 125k and 187.5k of 250k). anneal_*_steps, when set, pins an end in steps instead.
  c.randomness = ml_collections.ConfigDict()
  c.randomness.anneal_start_fraction = placeholder(float)
  c.randomness.anneal_end_fraction = placeholder(float)
  c.randomness.anneal_start_fraction = 0.5
  c.randomness.anneal_end_fraction = 0.75
  c.randomness.anneal_start_steps = placeholder(int)
  c.randomness.anneal_end_steps = placeholder(int)
  c.randomness.label_dropout = 0.1

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 4e-4
  c.optim.end_lr = 1e-5
  c.optim.warmup_steps = 62_500
  c.optim.b1 = 0.9
  c.optim.b2 = 0.96
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.03
  c.optim.grad_clip_norm = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 250_000
  c.train.global_batch = 2048
  c.train.log_every = 50

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 5_000
  c.checkpoint.keep = 3
  c.checkpoint.keep_every = 50_000  # also keep every 50k-th step for good; 0 = none

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # (data, fsdp, tensor) per slice; one may be -1
  c.mesh.dcn_data = 1  # slices (multislice): the data axis spans them

  c.data = ml_collections.ConfigDict()
  c.data.dir = placeholder(str)
  c.data.builtin = ""
  c.data.worker_count = 0  # Grain worker processes (0: batches are made in this process)
  c.data.read_threads = 16  # Grain threads reading records

  # The tokenizer decodes samples (previews, sample sets); VQGAN weights are a user file.
  c.image_size = 256
  c.tokenizer = tokenizers.default_config("vqgan")

  # Sample previews: a grid of fixed classes in TensorBoard every grid_every steps (0 = off;
  # needs tokenizer weights), and at the end samples_per_class for every class written to
  # <workdir>/samples.png, scored when `score` names a scorer ("digits": a classifier).
  c.eval = ml_collections.ConfigDict()
  c.eval.grid_every = 0
  c.eval.grid_classes = (1, 207, 279, 388, 417, 812, 933, 980)
  c.eval.samples_per_class = 0
  c.eval.score = ""
  # Held-out raster loss / accuracy / bits per token on the data set's validation split every
  # every_steps (0 = off), and sample quality (training/sample_eval.py): fid_samples
  # class-balanced samples scored at the end and every fid_every steps, in the feature space
  # fid_features: "inception" (on when inception_weights names the pytorch-fid file; needs
  # fid_reference, an .npz with mu/sigma or arr_0) or "digits" (the digits FID).
  c.eval.every_steps = 0
  c.eval.fid_every = 0
  c.eval.fid_samples = 0
  c.eval.fid_features = "inception"
  c.eval.inception_weights = ""
  c.eval.fid_reference = ""

  # A jax.profiler trace of num_steps steps from start_step into the workdir (0 steps = off).
  c.profile = ml_collections.ConfigDict()
  c.profile.start_step = 10
  c.profile.num_steps = 0

  c.sampling = ml_collections.ConfigDict()
  c.sampling.guidance_scale = 16.0
  c.sampling.guidance_power = 2.75
  c.sampling.temperature = 1.0
  c.sampling.top_k = 0  # off, as the official sampler
  c.sampling.top_p = 1.0  # off
  # "auto": a speculative window where it pays for the backend and images per chip, else the
  # plain sampler (rar_jax/sampling/speculative.py DEFAULT_WINDOWS); 0: always plain.
  c.sampling.speculative_window = "auto"
  return c
