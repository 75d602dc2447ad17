"""The permuted next-token objective: mean cross entropy and token accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def next_token_loss(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean cross entropy and accuracy of the L predicting positions.

  Args:
    logits: [B, L + 1, V] model logits (the last position predicts nothing and is dropped).
    targets: [B, L] the tokens in generation order, tokens[b, orders[b, i]].

  Returns:
    (loss, accuracy), float32 scalars averaged over B * L.
  """
  logits = logits[:, :-1].astype(jnp.float32)  # [B, L, V]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  accuracy = (jnp.argmax(logits, axis=-1) == targets).mean(dtype=jnp.float32)
  return loss, accuracy
