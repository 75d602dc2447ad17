"""An independent float64 NumPy implementation of the official RAR forward pass, written
straight from the official code's behaviour (docs/reference/official_code.md) on the
torch-layout state dict. Tests use it to check parity at sizes other than the golden's (other
widths, head dims, mlp ratios, lengths, codebooks)."""

from __future__ import annotations

import math

import numpy as np


def _ln(x, w=None, b=None, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  y = (x - mu) / np.sqrt(var + eps)
  return y if w is None else y * w + b


def _linear(sd, name, x):
  return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _silu(x):
  return x / (1 + np.exp(-x))


def _gelu(x):
  erf = np.vectorize(math.erf)
  return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _attention(sd, p, x, heads):
  b, n, d = x.shape
  hd = d // heads
  qkv = _linear(sd, f"{p}.qkv", x).reshape(b, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, hd]
  q = _ln(q, sd[f"{p}.q_norm.weight"], sd[f"{p}.q_norm.bias"])
  k = _ln(k, sd[f"{p}.k_norm.weight"], sd[f"{p}.k_norm.bias"])
  logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
  logits = logits + np.triu(np.full((n, n), -np.inf), 1)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
  return _linear(sd, f"{p}.proj", out)


def official_forward(sd, tokens, class_ids, orders, *, depth, heads, codebook_size):
  """Official `forward_fn(tokens, class_ids + codebook + 1, orders)` in eval mode.

  The null class is class index num_classes. Returns [B, L + 1, codebook] float64 logits.
  """
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  b, seq_len = tokens.shape
  emb = sd["embeddings.weight"]
  bi = np.arange(b)[:, None]
  cond = emb[class_ids + codebook_size + 1]  # [B, D]
  tok = emb[tokens][bi, orders]  # [B, L, D] permuted
  d = cond.shape[-1]
  cls = np.broadcast_to(sd["cls_token"].reshape(1, 1, d), (b, 1, d))
  x = np.concatenate([cls, cond[:, None], tok], axis=1)  # [B, L + 2, D]
  pos = sd["pos_embed"][0]
  x = x + np.concatenate([np.broadcast_to(pos[:2], (b, 2, d)), pos[2 : 2 + seq_len][orders]], 1)
  tape = sd["target_aware_pos_embed"][0][2 : 2 + seq_len][orders]
  zeros = np.zeros((b, 1, d))
  x = x + np.concatenate([zeros, tape, zeros], axis=1)
  c = cond[:, None] + sd["timesteps_embeddings"][0][: seq_len + 2]
  for i in range(depth):
    p = f"blocks.{i}"
    mods = np.split(_linear(sd, f"{p}.adaLN_modulation.1", _silu(c)), 6, axis=-1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
    h = _ln(x, sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"]) * (1 + scale_msa) + shift_msa
    x = x + gate_msa * _attention(sd, f"{p}.attn", h, heads)
    h = _ln(x, sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"]) * (1 + scale_mlp) + shift_mlp
    h = _linear(sd, f"{p}.mlp.fc2", _gelu(_linear(sd, f"{p}.mlp.fc1", h)))
    x = x + gate_mlp * h
  x, c = x[:, 1:], c[:, 1:]
  scale, shift = np.split(_linear(sd, "adaln_before_head.adaLN_modulation.1", _silu(c)), 2, -1)
  x = _ln(x) * (1 + scale) + shift
  return _linear(sd, "lm_head", x)
