"""The training job: `train_and_evaluate(config, workdir)`.

Wiring only: config validation, mesh, data, state (restored or created sharded), the compiled
step, and the loop with checkpoints, metrics, preemption handling and periodic sample grids.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from absl import logging
from clu import metric_writers, periodic_actions

from rar_jax import sharding
from rar_jax.data import datasets, holdout, pipeline
from rar_jax.evaluation import previews, sample_eval
from rar_jax.infra import (
  checkpointing,
  console,
  device_memory,
  distributed,
  run_config,
  stop_signals,
  workdir_lease,
)
from rar_jax.model import numerics, presets
from rar_jax.model.presets import ModelConfig
from rar_jax.sampling import decoding
from rar_jax.training import (
  eval_step,
  metrics,
  optim,
  profiling,
  progress_line,
  randomization,
  train_state,
  train_step,
)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the config resolves to, checked before anything compiles."""

  model: ModelConfig
  mesh: jax.sharding.Mesh
  total_steps: int
  anneal: tuple[int, int]
  global_batch: int


def resolve(config: ml_collections.ConfigDict, devices: Any = None) -> Plan:
  """Validates the config against the devices; raises ValueError naming the bad key/value."""
  model_cfg = presets.resolve(config.model)
  total = config.train.steps
  if total <= 0:
    raise ValueError(f"train.steps must be positive, got {total}")
  for key in ("checkpoint.every_steps", "train.log_every"):
    group, name = key.split(".")
    if config[group][name] <= 0:
      raise ValueError(f"{key} must be positive, got {config[group][name]}")
  checkpointing.validate(config.checkpoint)
  profiling.validate(config.profile)
  if config.eval.grid_every < 0:
    raise ValueError(f"eval.grid_every must be >= 0 (0 = off), got {config.eval.grid_every}")
  anneal = randomization.anneal_steps(config.randomness, total)
  randomization.check_label_dropout(config.randomness.label_dropout)
  optim.validate(config.optim)
  decoding.SamplingConfig.from_group(config.sampling)  # raises on a bad sampling value
  mesh = sharding.make_mesh(config.mesh.shape, config.mesh.dcn_data, devices)
  model_cfg = numerics.for_platform(model_cfg, mesh.devices.flat[0].platform)  # "auto" switches
  if jax.process_count() > 1 and mesh.shape["tensor"] > jax.local_device_count():
    raise ValueError(
      f"mesh tensor axis {mesh.shape['tensor']} spans hosts ({jax.local_device_count()} devices "
      "each): each host feeds its own batch rows, so keep mesh.shape[2] within a host"
    )
  dp = sharding.data_parallel_size(mesh)
  batch = config.train.global_batch
  if batch <= 0 or batch % dp:
    raise ValueError(
      f"train.global_batch={batch} is not divisible by the data-parallel size {dp} "
      f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']})"
    )
  return Plan(model_cfg, mesh, total, anneal, batch)


class PreemptionGuard:
  """SIGTERM (TPU maintenance, spot VMs) and SIGINT (ctrl-C) ask the loop to checkpoint and stop
  (`infra/stop_signals.py`); until the state exists they end the job at once, since there is
  nothing to save. With several processes, Orbax's preemption sync point makes every host stop
  at the same step after SIGTERM. A lost workdir lease also stops the job, with LeaseLostError."""

  def __init__(
    self, signals: stop_signals.StopSignals, lease: workdir_lease.WorkdirLease | None = None
  ):
    self.signals = signals
    self._lease = lease

  @property
  def requested(self) -> bool:
    """Whether a signal asked the (single-process) job to save and stop."""
    return self.signals.requested is not None

  def should_stop(self, step: int, manager: Any, at_checkpoint: bool = True) -> bool:
    """Whether to checkpoint now and stop (every process agrees on the step). A lost lease
    raises LeaseLostError: at once with one process, on every process at the next
    checkpoint step with several (only process 0 holds the lease)."""
    if jax.process_count() == 1 or at_checkpoint:
      lost = self._lease is not None and self._lease.lost is not None
      if distributed.any_process(lost):
        raise workdir_lease.LeaseLostError(
          self._lease.lost if lost else "process 0 lost the workdir lease (see its log)"
        )
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self.requested

  def stopped(self, step: int, saved: str) -> None:
    """Reports the stop at `step`: after SIGINT raises stop_signals.Interrupted (the command
    prints the line and exits 130); after SIGTERM logs the line (the job returns, exit 0)."""
    message = self.signals.stop_message(step, saved)
    self.signals.raise_if_interrupt(message)
    logging.warning("%s", message)


def _check_fits(plan: Plan, abstract: train_state.TrainState, memory: Any = None) -> None:
  """Refuses a job that cannot fit its devices, before anything is allocated: the parameters
  and optimizer state per device (the abstract state's shards) and, given the compiled step's
  memory_analysis, its temporaries and the rest of its peak (batch, outputs, code).

  Raises:
    device_memory.DoesNotFitError: naming what is needed and what the devices (or the host)
      have.
  """
  needs = {
    "parameters": device_memory.shard_bytes(abstract.params),
    "optimizer state": device_memory.shard_bytes(abstract.opt_state),
  }
  if memory is not None:
    peak = device_memory.compiled_peak_bytes(memory)
    needs["the compiled step's temporaries"] = int(memory.temp_size_in_bytes)
    needs["batch, outputs and code"] = max(peak - sum(needs.values()), 0)
  device_memory.check_fits(
    needs,
    list(plan.mesh.devices.flat),
    "use a smaller model (model.*) or batch (train.global_batch), or more devices "
    "(mesh.fsdp shards the state); rar-plan shows the figures for a topology",
  )


def _compile_step(
  plan: Plan,
  config: ml_collections.ConfigDict,
  optimizer: tuple[Any, Any],
  abstract: train_state.TrainState,
):
  """The step compiled ahead of time for the abstract state and batch (nothing allocated yet);
  logs its memory and refuses a step that cannot fit (`_check_fits`)."""
  sc = train_step.StepConfig(plan.model, *plan.anneal, config.randomness.label_dropout)
  compiled, lower_s, compile_s = train_step.compile_train_step(
    sc, *optimizer, plan.mesh, abstract, plan.global_batch
  )
  memory = compiled.memory_analysis()
  detail = ""
  if memory is not None:
    arguments, temporaries = memory.argument_size_in_bytes, memory.temp_size_in_bytes
    detail = f"; per device: arguments {arguments / 2**20:.1f} MiB, temporaries "
    detail += f"{temporaries / 2**20:.1f} MiB"
  console.info("Train step compiled in %.1fs%s", lower_s + compile_s, detail)
  if memory is not None:
    _check_fits(plan, abstract, memory)
  return compiled, lower_s + compile_s


def _restore_or_init(
  config: ml_collections.ConfigDict,
  manager: Any,
  plan: Plan,
  tx: Any,
  abstract: train_state.TrainState,
  data_iter: Any,
) -> train_state.TrainState:
  """The newest good checkpoint, else a fresh sharded state."""
  state = checkpointing.restore_latest(manager, abstract, data_iter)
  if state is None:
    state = train_state.init_sharded(plan.model, tx, config.seed, plan.mesh)
  return state


def _stop_before_training(
  guard: PreemptionGuard, manager: Any, step: int, state: Any, data_iter: Any
) -> bool:
  """After a signal that came once the state existed but before the first step: checkpoints the
  (restored or fresh) state unless that step is saved already and reports the stop
  (`PreemptionGuard.stopped`); returns True (the job then ends).

  Single process only: with several, JAX's preemption notifier holds SIGTERM and the hosts agree
  on a stop step inside the loop."""
  if not guard.requested:
    return False
  if step in manager.all_steps():
    guard.stopped(step, "its checkpoint exists already")
    return True
  checkpointing.save(manager, step, state, data_iter, force=True)
  manager.wait_until_finished()
  guard.stopped(step, "checkpoint written")
  return True


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> train_state.TrainState:
  """Trains (or resumes) the model described by config, writing everything under workdir.

  The job holds the workdir's lease throughout (a second job on it fails at once, naming this
  one), and refuses a resume whose config differs from the checkpoints' (`resume_config`;
  allow_config_change accepts changed non-model keys).

  Raises:
    workdir_lease.LeaseHeldError: another job uses workdir.
    run_config.ConfigChangeError: the config differs from the one in <workdir>/config.json.
  """
  multi_process = jax.process_count() > 1
  with stop_signals.StopSignals("training", multi_process=multi_process) as signals:
    plan = resolve(config)  # a bad config or data set is named before the workdir is touched
    sample_eval.check_config(config.eval)
    data_dir = datasets.prepare(config.data, plan.model)
    scores = sample_eval.enabled(config.eval)
    if config.eval.every_steps or (scores and config.eval.fid_features == "digits"):
      holdout.require_split(data_dir)
    scorer = sample_eval.build_scorer(config, data_dir) if scores else None
    with workdir_lease.hold(workdir, "training") as lease:
      if lease is not None:
        signals.add_cleanup(lease.release)  # also on an exit forced by a signal
      run_config.check(workdir, config, allow_config_change)
      return _train(config, workdir, PreemptionGuard(signals, lease), plan, data_dir, scorer)


def _train(
  config: ml_collections.ConfigDict,
  workdir: str,
  guard: PreemptionGuard,
  plan: Plan,
  data_dir: str,
  scorer: Any,
) -> train_state.TrainState:
  """train_and_evaluate, once the config and data are checked, the lease is held and the
  resume config is checked."""
  data_iter = iter(
    pipeline.make_dataset(
      data_dir,
      global_batch=plan.global_batch,
      seed=config.seed,
      worker_count=config.data.worker_count,
      read_threads=config.data.read_threads,
    )
  )
  optimizer = optim.make_optimizer(config.optim, plan.model, plan.total_steps)
  abstract = train_state.abstract_state(plan.model, optimizer[0], plan.mesh)
  _check_fits(plan, abstract)  # the state alone: before a compile that may take minutes
  manager = checkpointing.make_manager(workdir, config.checkpoint)
  guard.signals.describe_kept(lambda: checkpointing.describe_kept(manager.directory))
  console.info(
    "Training to step %d: global batch %d on mesh %s, workdir %s",
    plan.total_steps,
    plan.global_batch,
    dict(plan.mesh.shape),
    workdir,
  )
  compiled, compile_s = _compile_step(plan, config, optimizer, abstract)
  state = _restore_or_init(config, manager, plan, optimizer[0], abstract, data_iter)
  guard.signals.save_first()  # the state exists: a signal now saves it before the job stops
  checkpointing.write_workdir_config(workdir, config)  # once the state exists
  step = int(state.step)
  if _stop_before_training(guard, manager, step, state, data_iter):
    return state
  console.info("Starting at step %d", step)
  heldout = None
  if config.eval.every_steps:
    heldout = eval_step.HeldOutEval(
      data_dir, plan.model, plan.mesh, abstract.params, plan.global_batch
    )
  if _stop_before_training(guard, manager, step, state, data_iter):
    return state

  writer = metric_writers.create_default_writer(
    workdir, just_logging=jax.process_index() > 0, asynchronous=True
  )
  if step == 0:
    writer.write_hparams(config.to_dict())
  writer.write_scalars(step, {"compile_time_s": compile_s})
  line = progress_line.ProgressLine(plan.total_steps, step)
  logger = metrics.TrainMetrics(
    writer, plan.model, plan.global_batch, config.train.log_every, on_log=line
  )
  profiler = profiling.StepProfiler(config.profile, workdir)
  progress = periodic_actions.ReportProgress(num_train_steps=plan.total_steps, writer=writer)
  preview = previews.Previews(config, plan.model, plan.mesh)
  samples = sample_eval.SampleEval(config, scorer, preview) if scorer else None
  batch_sh = sharding.batch_sharding(plan.mesh)
  preempted = False
  try:
    while step < plan.total_steps:
      profiler.before_step(step)
      state, step_metrics = compiled(state, pipeline.to_global(next(data_iter), batch_sh))
      step += 1
      profiler.after_step(step, state)
      logger.push(step, step_metrics)
      progress(step)
      preview.maybe_write_grid(step, state.params, writer)
      if heldout and (step % config.eval.every_steps == 0 or step == plan.total_steps):
        writer.write_scalars(step, heldout(state.params))
      if samples and samples.due(step, plan.total_steps):
        with progress.timed("sample_quality"):
          quality = samples.run(step, state.params, writer, workdir)
        logging.info("Sample quality at step %d: %s", step, quality)
      due = step % config.checkpoint.every_steps == 0 or step == plan.total_steps
      preempted = guard.should_stop(step, manager, at_checkpoint=due)
      last = preempted or step == plan.total_steps
      if last or step % config.checkpoint.every_steps == 0:
        logger.flush()  # verifies this step is finite before it is saved
        checkpointing.save(manager, step, state, data_iter, force=last)
      if preempted:
        break
    logger.flush()
    if step == plan.total_steps:
      with progress.timed("final_samples"):
        result = preview.final_report(state.params, workdir)
      if result:
        writer.write_scalars(step, {"sample_accuracy": result["accuracy"]})
        console.info("Sample accuracy at step %d: %.3f", step, result["accuracy"])
  finally:
    profiler.close()
    manager.wait_until_finished()  # the final (or the stop's) checkpoint is on disk
    writer.flush()
  if preempted:
    guard.stopped(step, "checkpoint written")
  return state
