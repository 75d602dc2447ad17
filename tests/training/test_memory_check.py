"""The training job refuses a job that cannot fit its devices before it compiles or allocates
anything (the state alone), and after the ahead-of-time compile (the step's temporaries)."""

import types

import pytest

from rar_jax.infra import device_memory, workdir_lease
from rar_jax.training import optim, train, train_state
from tests.helpers import train_worker


def test_the_compiled_step_is_checked_with_its_temporaries(tmp_path):
  config = train_worker.tiny_config(str(tmp_path), 10)
  plan = train.resolve(config)
  memory = types.SimpleNamespace(
    argument_size_in_bytes=2**20,
    output_size_in_bytes=2**20,
    alias_size_in_bytes=2**20,
    temp_size_in_bytes=2**50,  # a petabyte of activations
    generated_code_size_in_bytes=0,
  )
  tx, _ = optim.make_optimizer(config.optim, plan.model, 10)
  abstract = train_state.abstract_state(plan.model, tx, plan.mesh)
  train._check_fits(plan, abstract)  # noqa: SLF001 - the tiny state fits
  with pytest.raises(device_memory.DoesNotFitError, match=r"the compiled step's temporaries "
                     r"1024\.0 TiB.* rar-plan shows the figures"):  # fmt: skip
    train._check_fits(plan, abstract, memory)  # noqa: SLF001


def test_a_model_far_too_big_is_refused_before_it_compiles_or_allocates(tmp_path, monkeypatch):
  data_dir = train_worker.write_random_dataset(str(tmp_path / "data"))
  config = train_worker.tiny_config(data_dir, 10)
  config.model.width, config.model.depth = 16384, 48
  config.model.heads, config.model.mlp_dim = 16, 65536  # the issue's ~900 GiB of parameters

  def no_compile(*args, **kwargs):
    raise AssertionError("compiled a step that cannot fit")

  monkeypatch.setattr(train, "_compile_step", no_compile)
  workdir = tmp_path / "run"
  with pytest.raises(
    device_memory.DoesNotFitError,
    match=r"^the job does not fit: it needs .* TiB of host memory .*parameters .* GiB, "
    r"optimizer state .* TiB\) but has ",
  ):
    train.train_and_evaluate(config, str(workdir))
  assert not (workdir / "checkpoints").exists()
  workdir_lease.WorkdirLease(workdir).acquire().release()  # released
