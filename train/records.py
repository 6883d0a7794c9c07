"""What a run reports: train.log, the per-step and validation records (JSON lines under logs/), the progress bar
and tensorboard. A resumed run truncates the records past its checkpoint, so they read as one run."""

from __future__ import annotations

import json
import logging
import os
import time

from e2p_core.atomic_files import atomic_write_text

log = logging.getLogger("e2p.train")

LOGS_FOLDER = "logs"
LOSS_LOG = "loss.jsonl"
VALIDATION_LOG = "validation.jsonl"
LOSS_TERMS = ("loss", "flow", "consistency")


def setup_logging(output_dir: str, is_main: bool) -> None:
    if not is_main:
        return
    os.makedirs(output_dir, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    for handler in (logging.StreamHandler(), logging.FileHandler(os.path.join(output_dir, "train.log"))):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.propagate = False


def read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_log(path: str, last_step: int) -> None:
    """Drop records past the resumed step, so the log of a resumed run reads as one uninterrupted run."""
    kept = [r for r in read_jsonl(path) if r["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def log_path(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, LOGS_FOLDER, name)


def truncate_records(output_dir: str, last_step: int) -> None:
    for name in (LOSS_LOG, VALIDATION_LOG):
        truncate_log(log_path(output_dir, name), last_step)


class RunRecords:
    """Collects the loss terms of each micro-batch and writes one record per optimiser step.

    Every process calls :meth:`add_micro_batch` (the terms are averaged over processes, a collective); the main
    process writes the files, the bar and the log; tensorboard is written through accelerate on every process.
    """

    def __init__(self, accelerator, output_dir: str, task: str, log_every: int, total_steps: int, first_step: int,
                 progress_bar: bool, use_tensorboard: bool):
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.output_dir = output_dir
        self.log_every = log_every
        self.total_steps = total_steps
        self.use_tensorboard = use_tensorboard
        self.first_step = first_step
        self.sums: dict[str, float] = {}
        self.micro_batches = 0
        self.bar = None
        if self.is_main and progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=first_step, desc=f"train {task}", dynamic_ncols=True)
        self.started = time.time()

    def global_mean(self, value):
        """A detached copy of ``value`` averaged over all processes (collective)."""
        return self.accelerator.reduce(value.detach().clone(), reduction="mean")

    def add_micro_batch(self, terms) -> None:
        for key, value in zip(LOSS_TERMS, (terms.total, terms.flow, terms.consistency)):
            if value is not None:
                self.sums[key] = self.sums.get(key, 0.0) + float(self.global_mean(value))
        self.micro_batches += 1

    def write_step(self, step: int, epoch_progress: float, learning_rate: float, weight: float) -> None:
        """The record of the optimiser step just taken: the mean of its micro-batches' terms."""
        record = {"step": step, "epoch": round(epoch_progress, 4), "lr": learning_rate,
                  "lambda": weight} | {k: v / self.micro_batches for k, v in self.sums.items()}
        self.sums, self.micro_batches = {}, 0
        if self.is_main:
            append_jsonl(log_path(self.output_dir, LOSS_LOG), record)
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{record['loss']:.4f}", lam=f"{record['lambda']:.2f}")
            if step % self.log_every == 0 or step == self.total_steps:
                rate = (step - self.first_step) / max(1e-9, time.time() - self.started)
                terms_text = " ".join(f"{k} {record[k]:.5f}" for k in LOSS_TERMS if k in record)
                log.info("step %d/%d epoch %.2f %s lambda %.3f lr %.2e (%.2f steps/s)", step, self.total_steps,
                         epoch_progress, terms_text, record["lambda"], record["lr"], rate)
        if self.use_tensorboard:
            self.accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)

    def write_validation(self, step: int, scores: dict[str, float]) -> None:
        if self.is_main and scores:
            append_jsonl(log_path(self.output_dir, VALIDATION_LOG), {"step": step} | scores)
            log.info("validation at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if self.use_tensorboard:
            self.accelerator.log({f"val/{k}": v for k, v in scores.items()}, step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
