"""MaskGIT-VQGAN port: parity with the official PyTorch golden, converter errors, sharding,
released-size shapes, and the pixel tokenizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from rar_jax import sharding
from rar_jax.tokenizers import vqgan
from rar_jax.tokenizers.pixel import PixelTokenizer
from rar_jax.tokenizers.vqgan import VQGAN, Tokenizer, VQGANConfig

TOL = 1e-4


def nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


@pytest.fixture(scope="module")
def golden(testdata):
  with np.load(testdata / "vqgan_golden_tiny.npz") as f:
    data = {k: f[k] for k in f.files}
  hidden, z, codebook, res = (int(v) for v in data["config"])
  cfg = VQGANConfig(
    hidden_channels=hidden, num_res_blocks=1, z_channels=z, codebook_size=codebook, resolution=res
  )
  state = {k[len("param/") :]: v.astype(np.float32) for k, v in data.items() if k[:6] == "param/"}
  data["images"] = np.transpose(data["images_nchw"], (0, 2, 3, 1))
  return cfg, state, data


@pytest.fixture(scope="module")
def tiny(golden):
  cfg, state, _ = golden
  return cfg, vqgan.load_official(state, cfg)


def forward_all(model: VQGAN, images):
  latent = model.encode_latent(images)
  codes = model.quantize(latent)
  return latent, codes, model.decode_raw(codes), model.decode(codes)


@pytest.fixture(scope="module")
def unsharded(golden, tiny):
  """Golden images plus 6 random ones, run unsharded on one device in a single jit."""
  _, _, data = golden
  cfg, params = tiny
  rng = np.random.default_rng(0)
  images = np.concatenate([data["images"], rng.uniform(size=(6, 32, 32, 3))]).astype(np.float32)
  run = jax.jit(lambda p, x: VQGAN(cfg).apply({"params": p}, x, method=forward_all))
  return images, run(params, images)


def test_golden_parity(golden, unsharded):
  data = golden[2]
  latent, codes, raw, decoded = (np.asarray(x[:2]) for x in unsharded[1])
  np.testing.assert_allclose(nchw(latent), data["encoder_out_nchw"], atol=TOL, rtol=0)
  np.testing.assert_array_equal(codes, data["codes"])
  np.testing.assert_allclose(nchw(raw), data["decoder_raw_nchw"], atol=TOL, rtol=0)
  np.testing.assert_allclose(nchw(decoded), data["decoded_nchw"], atol=TOL, rtol=0)


def test_converter_rejects_missing_key(golden):
  cfg, state, _ = golden
  bad = dict(state)
  del bad["decoder.up.3.block.0.nin_shortcut.weight"]
  with pytest.raises(ValueError, match=r"decoder\.up\.3\.block\.0\.nin_shortcut.*\(64, 64, 1, 1\)"):
    vqgan.convert_official(bad, cfg)


def test_converter_rejects_extra_key(golden):
  cfg, state, _ = golden
  bad = {**state, "encoder.down.0.block.0.nin_shortcut.weight": np.zeros((32, 32, 1, 1))}
  with pytest.raises(ValueError, match=r"unexpected.*down\.0\.block\.0\.nin_shortcut.*\(32, 32"):
    vqgan.convert_official(bad, cfg)


def test_converter_rejects_wrong_shape(golden):
  cfg, state, _ = golden
  bad = {**state, "quantize.embedding.weight": np.zeros((16, 64), np.float32)}
  with pytest.raises(
    ValueError, match=r"quantize\.embedding\.weight.*\(16, 64\), expected \(64, 16\)"
  ):
    vqgan.convert_official(bad, cfg)


def test_tokenizer_sharded_matches_unsharded(tiny, unsharded):
  cfg, params = tiny
  images, (_, ref_codes, _, ref_decoded) = unsharded
  assert len(jax.devices()) == 8
  mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2, 1), sharding.MESH_AXES)
  tok = Tokenizer(cfg, params, mesh)
  codes = tok.encode(jax.device_put(images, jax.devices()[3]))  # committed elsewhere: resharded
  assert codes.sharding.num_devices == 8 and codes.dtype == jnp.int32
  np.testing.assert_array_equal(codes, ref_codes)
  decoded = tok.decode(codes)
  assert decoded.shape == (8, 32, 32, 3)
  np.testing.assert_allclose(decoded, ref_decoded, atol=1e-5, rtol=0)
  assert (tok.name, tok.seq_len, tok.codebook_size, tok.image_size) == (
    "maskgit-vqgan-f16-32",
    4,
    64,
    32,
  )
  with pytest.raises(ValueError, match=r"batch size 3 .* 8"):
    Tokenizer(cfg, params).encode(images[:3])
  with pytest.raises(ValueError, match="float"):
    tok.encode((images * 255).astype(np.uint8))


def test_load_official_from_npz_path(golden, tiny, tmp_path):
  cfg, state, _ = golden
  path = tmp_path / "tokenizer.npz"
  np.savez(path, **state)
  params = vqgan.load_official(path, cfg)
  jax.tree.map(np.testing.assert_array_equal, params, tiny[1])


def test_released_config_shapes():
  cfg = VQGANConfig()
  assert (cfg.latent_size, cfg.seq_len) == (16, 256)
  shapes = jax.eval_shape(lambda: vqgan.init_params(cfg, jax.random.key(0)))
  expected = vqgan.official_shapes(cfg)
  assert expected["quantize.embedding.weight"] == (1024, 256)
  assert "encoder.down.4.block.1.conv2.weight" in expected
  assert "decoder.up.1.block.0.nin_shortcut.weight" in expected
  zeros = {k: np.zeros(s, np.float32) for k, s in expected.items()}
  params = vqgan.load_official(zeros, cfg)
  got = jax.tree.map(lambda x: x.shape, params)
  want = jax.tree.map(lambda x: x.shape, shapes)
  assert got == want


def test_pixel_tokenizer_round_trip():
  tok = PixelTokenizer()
  assert (tok.seq_len, tok.codebook_size, tok.image_size) == (64, 17, 8)
  codes = np.random.default_rng(0).integers(0, 17, size=(5, 64)).astype(np.int32)
  images = tok.decode(codes)
  assert images.shape == (5, 8, 8, 3) and images.dtype == jnp.float32
  assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
  np.testing.assert_array_equal(tok.encode(images), codes)
  np.testing.assert_array_equal(tok.encode(np.asarray(images)[..., 0]), codes)
  with pytest.raises(ValueError, match="float"):
    tok.encode(codes.reshape(5, 8, 8))
